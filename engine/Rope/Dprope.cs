// DPRoPE (Wu et al., EMNLP 2024; ROPE.md section 3): per-pair angle histograms over every position of the
// pre-training and target lengths, the disturbance D = sum_k p ln(p/q) of a candidate table, and the per-pair choice
// among candidates (threshold t, a target count of changed pairs, or a tolerance that prefers small factors).
// Example: Dprope.Paper(new DpropeSetup(128, 10000, 4096, 8192)).MeanDisturbance == 6.71e-3 (paper Table 3).
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>The fixed inputs of the distribution estimate: rotary dim, base, pre-training and target lengths, bins.</summary>
public readonly record struct DpropeSetup(int RotaryDim, double Theta, int PretrainedLength, int TargetLength, int Bins = 360)
{
    /// <summary>Target over pre-training length.</summary>
    public double Scale => TargetLength / (double)PretrainedLength;

    public void Validate()
    {
        RopeMath.CheckDim(RotaryDim);
        if (PretrainedLength < 1 || TargetLength < 1 || TargetLength > (1 << 24))
            throw new ArgumentOutOfRangeException(nameof(TargetLength), "lengths must be in 1 .. 2^24");
        if (Bins < 2) throw new ArgumentOutOfRangeException(nameof(Bins), "at least two bins");
    }
}

/// <summary>One candidate strategy: a whole table, of which each pair may take its own entry.</summary>
public sealed record DpropeCandidate(string Name, float[] InvFreq);

/// <summary>How pairs pick a candidate: DPRoPE's threshold t (0 = reference code), a count of changed pairs, or a tolerance.</summary>
public readonly record struct DpropeSelection(double Threshold = 0.0, int? ChangedPairs = null, double? Tolerance = null);

/// <summary>The chosen table with every candidate's per-pair disturbance, for reports and plots.</summary>
public sealed record DpropeResult(DpropeSetup Setup, IReadOnlyList<DpropeCandidate> Candidates, double[][] Disturbance,
    int[] Choice, float[] InvFreq)
{
    /// <summary>Disturbance of the chosen entry of each pair.</summary>
    public double[] ChosenDisturbance => [.. Choice.Select((c, j) => Disturbance[c][j])];

    /// <summary>Mean over pairs of the chosen disturbance (the paper's D).</summary>
    public double MeanDisturbance => ChosenDisturbance.Average();

    /// <summary>Pairs that did not keep candidate 0 (extrapolation).</summary>
    public int ChangedPairs => Choice.Count(c => c != 0);
}

/// <summary>Angle histograms, disturbances and DPRoPE's per-pair selection.</summary>
public static class Dprope
{
    /// <summary>The pseudo-count added to every bin (torch.finfo(float16).tiny = 2^-14, as the reference code).</summary>
    public const double PseudoCount = 1.0 / 16384;

    /// <summary>Counts of (m * omega mod 2pi) over m = 0..length-1 in bins equal parts of [0, 2pi), float32 angles.</summary>
    public static int[] AngleCounts(float omega, int length, int bins)
    {
        var counts = new int[bins];
        AngleCounts(omega, length, counts);
        return counts;
    }

    /// <summary>Fills counts (zeroed first) with the angle histogram; bins = counts.Length.</summary>
    public static void AngleCounts(float omega, int length, Span<int> counts)
    {
        counts.Clear();
        int bins = counts.Length;
        float twoPi = (float)(2 * Math.PI);
        double twoPiD = twoPi;
        float perBin = (float)(bins / (2 * Math.PI));
        for (int m = 0; m < length; m++)
        {
            float angle = m * omega; // float32 product, as inv_freq * arange in float32
            // fmod(angle, f32(2pi)) exactly: q * twoPi has at most 48 significant bits and the difference of two
            // multiples of 2^-21 below 2^24 is exact in double, so r equals the float fmod.
            double q = Math.Floor(angle / twoPiD);
            double r = angle - q * twoPiD;
            if (r < 0) r += twoPiD; else if (r >= twoPiD) r -= twoPiD;
            int k = (int)(perBin * (float)r);
            counts[k < bins ? k : bins - 1]++;
        }
    }

    /// <summary>sum_k p_k ln(p_k / q_k) with p = (c + 2^-14)/L over the pre-training counts and q likewise over the target.</summary>
    public static double Disturbance(ReadOnlySpan<int> pretrained, int pretrainedLength, ReadOnlySpan<int> extended, int targetLength)
    {
        if (pretrained.Length != extended.Length) throw new ArgumentException("histograms differ in bin count");
        double d = 0;
        for (int k = 0; k < pretrained.Length; k++)
        {
            double p = (pretrained[k] + PseudoCount) / pretrainedLength;
            double q = (extended[k] + PseudoCount) / targetLength;
            d += p * Math.Log(p / q);
        }
        return d;
    }

    /// <summary>Per-pair disturbance of the candidates against plain RoPE's pre-training angles; [candidate][pair].</summary>
    public static double[][] Disturbances(in DpropeSetup s, IReadOnlyList<float[]> tables)
    {
        s.Validate();
        var plain = RopeMath.DefaultInvFreq(s.RotaryDim, s.Theta);
        foreach (var t in tables)
            if (t.Length != plain.Length) throw new ArgumentException($"a candidate has {t.Length} pairs, expected {plain.Length}");
        var d = new double[tables.Count][];
        for (int c = 0; c < d.Length; c++) d[c] = new double[plain.Length];
        var setup = s;
        // One task per pair: its pre-training histogram, then one histogram per distinct candidate frequency.
        Parallel.For(0, plain.Length, j =>
        {
            var p = AngleCounts(plain[j], setup.PretrainedLength, setup.Bins);
            var q = new int[setup.Bins];
            var seen = new Dictionary<float, double>();
            for (int c = 0; c < tables.Count; c++)
            {
                float w = tables[c][j];
                if (!seen.TryGetValue(w, out double v))
                {
                    AngleCounts(w, setup.TargetLength, q);
                    v = Disturbance(p, setup.PretrainedLength, q, setup.TargetLength);
                    seen[w] = v;
                }
                d[c][j] = v;
            }
        });
        return d;
    }

    /// <summary>Mean over pairs of a table's disturbance.</summary>
    public static double MeanDisturbance(in DpropeSetup s, float[] invFreq) => Disturbances(s, [invFreq])[0].Average();

    /// <summary>Per pair, picks a candidate by the selection rule; candidate 0 is the one kept unless another wins.</summary>
    public static DpropeResult Select(in DpropeSetup s, IReadOnlyList<DpropeCandidate> candidates, DpropeSelection rule)
    {
        if (candidates.Count == 0) throw new ArgumentException("no candidates");
        var d = Disturbances(s, [.. candidates.Select(c => c.InvFreq)]);
        int pairs = s.RotaryDim / 2;
        var choice = new int[pairs];
        var gain = new double[pairs];
        var plain = RopeMath.DefaultInvFreq(s.RotaryDim, s.Theta);
        for (int j = 0; j < pairs; j++)
        {
            int best = 0;
            for (int c = 1; c < candidates.Count; c++) if (d[c][j] < d[best][j]) best = c;
            if (rule.Tolerance is { } tol)
            {
                // The fastest frequency (smallest divisor theta_j / omega_j) among candidates within tol of the best.
                double limit = d[best][j] + tol;
                for (int c = 0; c < candidates.Count; c++)
                    if (d[c][j] <= limit && candidates[c].InvFreq[j] > candidates[best].InvFreq[j]) best = c;
            }
            choice[j] = best;
            gain[j] = d[0][j] - d[best][j];
        }
        if (rule.ChangedPairs is { } n)
        {
            if (n < 0 || n > pairs) throw new ArgumentOutOfRangeException(nameof(rule), $"changed pairs must be in 0..{pairs}");
            var order = Enumerable.Range(0, pairs).OrderByDescending(j => gain[j]).ThenBy(j => j).ToArray();
            for (int i = n; i < pairs; i++) choice[order[i]] = 0;
            for (int i = 0; i < n; i++)
                if (choice[order[i]] == 0) choice[order[i]] = BestOther(d, order[i]);
        }
        else if (rule.Tolerance is null)
        {
            for (int j = 0; j < pairs; j++) if (!(gain[j] > rule.Threshold)) choice[j] = 0;
        }
        var inv = new float[pairs];
        for (int j = 0; j < pairs; j++) inv[j] = candidates[choice[j]].InvFreq[j];
        return new DpropeResult(s, candidates, d, choice, inv);
    }

    /// <summary>The paper's method: extrapolate or interpolate by s = target / pre-training, per pair.</summary>
    public static DpropeResult Paper(in DpropeSetup s, DpropeSelection rule = default)
    {
        var plain = RopeMath.DefaultInvFreq(s.RotaryDim, s.Theta);
        var interp = new float[plain.Length];
        for (int j = 0; j < plain.Length; j++) interp[j] = (float)(plain[j] / s.Scale);
        return Select(s, [new DpropeCandidate("extrapolate", plain), new DpropeCandidate("interpolate", interp)], rule);
    }

    /// <summary>The paper's table as a RopeTable (no magnitude, no query scale).</summary>
    public static RopeTable PaperTable(in DpropeSetup s, DpropeSelection rule = default)
    {
        var r = Paper(s, rule);
        return new RopeTable { Method = "dprope", InvFreq = r.InvFreq, Factor = s.Scale, InterpolatedPairs = r.ChangedPairs };
    }

    private static int BestOther(double[][] d, int j)
    {
        int best = 1;
        for (int c = 2; c < d.Length; c++) if (d[c][j] < d[best][j]) best = c;
        return best;
    }
}

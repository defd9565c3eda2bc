// "dprope-plus", the default table for running past the trained context: pairs that turned fully in training are
// kept; the others take, from a richer DPRoPE candidate set (intermediate factors s^(k/K) and the YaRN ramp), the
// smallest factor whose angle distribution is within a tolerance of the best; cos/sin get YaRN's magnitude.
// Example: DpropePlus.Build(new DpropeSetup(64, 10000, 512, 4096), new DpropePlusOptions()).Describe().
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>Knobs of dprope-plus; the defaults are the shipped recipe.</summary>
public sealed record DpropePlusOptions
{
    /// <summary>Intermediate factors s^(k/Steps), k = 1..Steps, offered to every pair.</summary>
    public int Steps { get; init; } = 4;

    /// <summary>A pair keeps the fastest candidate whose disturbance is within Tolerance * ln(s) of the best.</summary>
    public double Tolerance { get; init; } = 0.05;

    /// <summary>Also offer the YaRN ramp's frequency (factor s, beta 32/1) to every pair.</summary>
    public bool YarnCandidate { get; init; } = true;

    /// <summary>Multiply cos/sin by YaRN's 0.1 ln(f) + 1 for the largest applied divisor f.</summary>
    public bool Magnitude { get; init; } = true;

    /// <summary>Add entropy-aware ABF's query scale max(1, log_L(m+1)) from layer SkipLayers on.</summary>
    public bool QueryScale { get; init; }

    public int SkipLayers { get; init; } = 2;

    /// <summary>Pairs whose wavelength fits KeepTurns times into the trained length keep their frequency (0 = let the histogram decide).</summary>
    public double KeepTurns { get; init; } = 4.0;

    /// <summary>Histogram bins (the paper's 360 when null).</summary>
    public int? Bins { get; init; }
}

/// <summary>The default context-extension method: DPRoPE with more candidates, a factor-preferring tolerance and magnitude.</summary>
public static class DpropePlus
{
    /// <summary>Candidates: extrapolation, plain / s^(k/Steps) for k = 1..Steps, and the YaRN ramp (factor s).</summary>
    public static List<DpropeCandidate> Candidates(in DpropeSetup s, DpropePlusOptions o)
    {
        if (o.Steps < 1) throw new ArgumentOutOfRangeException(nameof(o), "steps must be at least 1");
        var plain = RopeMath.DefaultInvFreq(s.RotaryDim, s.Theta);
        var list = new List<DpropeCandidate> { new("extrapolate", plain) };
        for (int k = 1; k <= o.Steps; k++)
        {
            double f = Math.Pow(s.Scale, k / (double)o.Steps);
            list.Add(new DpropeCandidate(FormattableString.Invariant($"x1/{f:0.###}"), [.. plain.Select(w => (float)(w / f))]));
        }
        if (o.YarnCandidate)
            list.Add(new DpropeCandidate("yarn", YarnRope.Build(s.RotaryDim, s.Theta, new YarnOptions(s.Scale, s.PretrainedLength)).InvFreq));
        return list;
    }

    /// <summary>The per-pair selection with every candidate's disturbance (tolerance is relative to ln s).</summary>
    public static DpropeResult Select(DpropeSetup s, DpropePlusOptions o)
    {
        if (o.Bins is { } bins) s = s with { Bins = bins };
        var candidates = Candidates(s, o);
        var r = Dprope.Select(s, candidates, new DpropeSelection(Tolerance: o.Tolerance * Math.Log(Math.Max(s.Scale, 1.0 + 1e-9))));
        // A pair that completed KeepTurns full turns in training saw every angle; extrapolating it keeps its
        // distribution (its histogram differences are sampling noise of L points in many bins) and keeps the
        // short-range resolution that slowing it would blur.
        var choice = (int[])r.Choice.Clone();
        var inv = (float[])r.InvFreq.Clone();
        var plain = candidates[0].InvFreq;
        for (int j = 0; j < plain.Length; j++)
            if (o.KeepTurns > 0 && 2 * Math.PI / plain[j] * o.KeepTurns <= s.PretrainedLength) { choice[j] = 0; inv[j] = plain[j]; }
        return r with { Choice = choice, InvFreq = inv };
    }

    /// <summary>The dprope-plus table for target over pre-training length s (plain RoPE when s is at most 1).</summary>
    public static RopeTable Build(DpropeSetup s, DpropePlusOptions o)
    {
        if (s.Scale <= 1.0) return PlainRope.Default(s.RotaryDim, s.Theta) with { Method = "dprope-plus" };
        var r = Select(s, o);
        // YaRN's attention temperature for the factor the slowest pair actually got (s when any pair interpolates fully).
        var plain = RopeMath.DefaultInvFreq(s.RotaryDim, s.Theta);
        double applied = 1.0;
        for (int j = 0; j < plain.Length; j++) applied = Math.Max(applied, plain[j] / (double)r.InvFreq[j]);
        return new RopeTable
        {
            Method = "dprope-plus", InvFreq = r.InvFreq, Factor = s.Scale, InterpolatedPairs = RopeMath.CountInterpolated(r.InvFreq, s.Theta),
            Magnitude = o.Magnitude ? (float)RopeMath.YarnMscale(applied) : 1f,
            QueryScale = o.QueryScale ? new QueryScale(s.PretrainedLength, o.SkipLayers) : null,
        };
    }
}

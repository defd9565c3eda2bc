// "dprope-plus", the default table for running past the trained context: DPRoPE's distribution argument with a
// richer candidate set (intermediate factors s^(k/K) and the YaRN ramp), a tolerance that keeps the smallest factor
// whose angle distribution is about as close as the best one, and YaRN's magnitude for the chosen factor.
// Example: DpropePlus.Build(new DpropeSetup(64, 10000, 512, 4096), new DpropePlusOptions()).Describe().
namespace LlamaRun.Rope;

/// <summary>Knobs of dprope-plus; the defaults are the shipped recipe.</summary>
public readonly record struct DpropePlusOptions(
    int Steps = 4,
    double Tolerance = 0.05,
    bool YarnCandidate = true,
    bool Magnitude = true,
    bool QueryScale = false,
    int SkipLayers = 2);

/// <summary>The default context-extension method: DPRoPE with more candidates, a factor-preferring tolerance and magnitude.</summary>
public static class DpropePlus
{
    /// <summary>Candidates: extrapolation, plain / s^(k/Steps) for k = 1..Steps, and the YaRN ramp (factor s).</summary>
    public static List<DpropeCandidate> Candidates(in DpropeSetup s, in DpropePlusOptions o)
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
    public static DpropeResult Select(in DpropeSetup s, in DpropePlusOptions o) =>
        Dprope.Select(s, Candidates(s, o), new DpropeSelection(Tolerance: o.Tolerance * Math.Log(Math.Max(s.Scale, 1.0 + 1e-9))));

    /// <summary>The dprope-plus table for target over pre-training length s (plain RoPE when s is at most 1).</summary>
    public static RopeTable Build(in DpropeSetup s, in DpropePlusOptions o)
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

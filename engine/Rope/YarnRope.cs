// YaRN as transformers' _compute_yarn_parameters computes it (ROPE.md 1.6): a ramp, linear in the pair index,
// between extrapolated pairs (more than beta_fast turns in the original context) and interpolated ones (fewer than
// beta_slow), plus the cos/sin magnitude 0.1 ln s + 1 (or the mscale ratio, or an explicit attention_factor).
// Example: YarnRope.Build(128, 10000, new YarnOptions(4, 4096)) has pairs 0..20 kept, 46..63 divided by 4.
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>YaRN settings with transformers' defaults (beta_fast 32, beta_slow 1, truncate on).</summary>
public readonly record struct YarnOptions(
    double Factor,
    int OriginalMaxPositions,
    double BetaFast = 32.0,
    double BetaSlow = 1.0,
    bool Truncate = true,
    double? AttentionFactor = null,
    double? Mscale = null,
    double? MscaleAllDim = null);

/// <summary>YaRN (NTK-by-parts ramp plus attention magnitude).</summary>
public static class YarnRope
{
    /// <summary>The fractional pair index whose wavelength fits numRotations times into the original context.</summary>
    public static double CorrectionDim(double numRotations, int rotaryDim, double theta, int originalMaxPositions) =>
        rotaryDim * Math.Log(originalMaxPositions / (numRotations * 2 * Math.PI)) / (2 * Math.Log(theta));

    /// <summary>The ramp's ends (low, high) in pair indices, as transformers clamps and truncates them.</summary>
    public static (double Low, double High) CorrectionRange(int rotaryDim, double theta, in YarnOptions o)
    {
        double low = CorrectionDim(o.BetaFast, rotaryDim, theta, o.OriginalMaxPositions);
        double high = CorrectionDim(o.BetaSlow, rotaryDim, theta, o.OriginalMaxPositions);
        if (o.Truncate) { low = Math.Floor(low); high = Math.Ceiling(high); }
        // transformers clamps with dim - 1 (not dim/2 - 1); kept for parity.
        return (Math.Max(low, 0), Math.Min(high, rotaryDim - 1));
    }

    /// <summary>The cos/sin magnitude: explicit attention_factor, else the mscale ratio, else 0.1 ln s + 1.</summary>
    public static double AttentionFactor(in YarnOptions o)
    {
        if (o.AttentionFactor is { } a) return a;
        if (o.Mscale is { } m && m != 0 && o.MscaleAllDim is { } mAll && mAll != 0)
            return RopeMath.YarnMscale(o.Factor, m) / RopeMath.YarnMscale(o.Factor, mAll);
        return RopeMath.YarnMscale(o.Factor);
    }

    /// <summary>Per-pair extrapolation weight e_j = 1 - clamp((j - low)/(high - low), 0, 1), float32 as transformers.</summary>
    public static float[] ExtrapolationWeights(int rotaryDim, double theta, in YarnOptions o)
    {
        var (low, high) = CorrectionRange(rotaryDim, theta, o);
        if (low == high) high += 0.001;
        var e = new float[rotaryDim / 2];
        for (int j = 0; j < e.Length; j++)
        {
            float ramp = ((float)j - (float)low) / (float)(high - low);
            e[j] = 1f - Math.Clamp(ramp, 0f, 1f);
        }
        return e;
    }

    /// <summary>The YaRN table for a checkpoint or a target context.</summary>
    public static RopeTable Build(int rotaryDim, double theta, in YarnOptions o)
    {
        RopeMath.CheckDim(rotaryDim);
        RopeMath.CheckFactor(o.Factor, "yarn factor");
        if (o.OriginalMaxPositions < 1) throw new ArgumentOutOfRangeException(nameof(o), "original_max_position_embeddings must be positive");
        if (!(o.BetaFast > 0) || !(o.BetaSlow > 0)) throw new ArgumentOutOfRangeException(nameof(o), "beta_fast and beta_slow must be positive");
        var e = ExtrapolationWeights(rotaryDim, theta, o);
        var inv = new float[rotaryDim / 2];
        for (int j = 0; j < inv.Length; j++)
        {
            float pos = RopeMath.PosFreq(theta, j, rotaryDim);
            float extrapolated = 1f / pos;
            float interpolated = 1f / (float)(o.Factor * pos);
            inv[j] = interpolated * (1f - e[j]) + extrapolated * e[j];
        }
        return new RopeTable
        {
            Method = "yarn", InvFreq = inv, Factor = o.Factor, Magnitude = (float)AttentionFactor(o),
            InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }
}

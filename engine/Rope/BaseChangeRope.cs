// Methods that only change the RoPE base: NTK-aware (b * s^(d/(d-2))), dynamic NTK (transformers "dynamic",
// recomputed per sequence length), ABF (a new base) and entropy-aware ABF (base 500000 plus a query scale).
// ROPE.md 1.3, 1.4, 5. Example: BaseChangeRope.NtkBase(128, 10000, 4) == 40889.94.
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>Base-change RoPE methods: NTK-aware, dynamic NTK, ABF and entropy-aware ABF.</summary>
public static class BaseChangeRope
{
    /// <summary>Entropy-aware ABF's base (its paper's Table 1 and code).</summary>
    public const double EntropyAbfBase = 500000.0;

    /// <summary>NTK-aware base b * s^(d/(d-2)); the slowest pair then turns exactly s times slower.</summary>
    public static double NtkBase(int rotaryDim, double theta, double factor)
    {
        RopeMath.CheckDim(rotaryDim);
        RopeMath.CheckFactor(factor);
        return theta * Math.Pow(factor, rotaryDim / (rotaryDim - 2.0));
    }

    /// <summary>Static NTK-aware scaling by factor s.</summary>
    public static RopeTable Ntk(int rotaryDim, double theta, double factor)
    {
        var inv = RopeMath.DefaultInvFreq(rotaryDim, NtkBase(rotaryDim, theta, factor));
        return new RopeTable
        {
            Method = "ntk", InvFreq = inv, Factor = factor, InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }

    /// <summary>Adjusted base frequency: plain RoPE with a different base (a larger base slows every pair but the first).</summary>
    public static RopeTable Abf(int rotaryDim, double newTheta, double theta)
    {
        var inv = RopeMath.DefaultInvFreq(rotaryDim, newTheta);
        return new RopeTable
        {
            Method = FormattableString.Invariant($"abf(base={newTheta:0.###})"), InvFreq = inv,
            InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }

    /// <summary>Entropy-aware ABF: base 500000 and q scaled by max(1, ln(m+1)/ln(pretrained)) from layer skipLayers on.</summary>
    public static RopeTable EntropyAbf(int rotaryDim, double theta, int pretrainedContext,
        double newTheta = EntropyAbfBase, int skipLayers = 2)
    {
        if (pretrainedContext < 2) throw new ArgumentOutOfRangeException(nameof(pretrainedContext));
        var inv = RopeMath.DefaultInvFreq(rotaryDim, newTheta);
        return new RopeTable
        {
            Method = "eabf", InvFreq = inv, InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
            QueryScale = new QueryScale(pretrainedContext, skipLayers),
        };
    }

    /// <summary>transformers' dynamic NTK base for a sequence of seqLen tokens (float64 form).</summary>
    public static double DynamicBase(int rotaryDim, double theta, double factor, int maxPositions, int seqLen)
    {
        RopeMath.CheckDim(rotaryDim);
        RopeMath.CheckFactor(factor);
        int n = Math.Max(seqLen, maxPositions);
        return theta * Math.Pow(factor * n / maxPositions - (factor - 1), rotaryDim / (rotaryDim - 2.0));
    }

    /// <summary>
    /// Dynamic NTK as transformers 5.x runs it: the default table up to maxPositions, beyond it the base recomputed
    /// for the sequence length (in float32, as the position-derived tensor is).
    /// </summary>
    public static RopeSchedule DynamicNtk(int rotaryDim, double theta, double factor, int maxPositions)
    {
        RopeMath.CheckFactor(factor);
        if (maxPositions < 1) throw new ArgumentOutOfRangeException(nameof(maxPositions));
        var plain = PlainRope.Default(rotaryDim, theta) with { Method = "dynamic", Factor = factor };
        return new RopeSchedule(plain, seqLen => seqLen <= maxPositions ? plain : DynamicAt(seqLen));

        RopeTable DynamicAt(int seqLen)
        {
            // seq_len arrives as an int64 tensor, so factor * seq_len / max - (factor - 1), the power and the product
            // with base are float32 tensor ops; then base ** (2j/d) is a float32 tensor power.
            float x = (float)(factor * seqLen);
            x = (float)(x / (double)maxPositions);
            x = (float)(x - (factor - 1));
            float b = (float)(theta * (float)Math.Pow(x, rotaryDim / (rotaryDim - 2.0)));
            var inv = new float[rotaryDim / 2];
            for (int j = 0; j < inv.Length; j++) inv[j] = 1f / (float)Math.Pow(b, RopeMath.Exponent(j, rotaryDim));
            return new RopeTable
            {
                Method = "dynamic", InvFreq = inv, Factor = factor,
                InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
            };
        }
    }
}

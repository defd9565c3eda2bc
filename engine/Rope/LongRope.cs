// LongRoPE / Phi-3 "longrope" (ROPE.md 1.8): per-pair rescale factors from the checkpoint, short_factor up to
// original_max_position_embeddings positions and long_factor beyond, magnitude sqrt(1 + ln s / ln L).
// Example: LongRope.AttentionFactor(131072 / 4096.0, 4096) == 1.1902381.
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>longrope rope_parameters (factor and attention_factor null when absent).</summary>
public sealed record LongRopeOptions(float[] ShortFactor, float[] LongFactor, int OriginalMaxPositions,
    int MaxPositions, double? Factor = null, double? AttentionFactor = null);

/// <summary>LongRoPE tables and their length switch.</summary>
public static class LongRope
{
    /// <summary>sqrt(1 + ln s / ln L) for s above 1, else 1 (LongRoPE's "su" policy, transformers' default).</summary>
    public static double AttentionFactor(double factor, int originalMaxPositions) =>
        factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(originalMaxPositions));

    /// <summary>The table with the given per-pair factors: 1 / (ext_j * base^(2j/d)), float32.</summary>
    public static RopeTable Build(int rotaryDim, double theta, ReadOnlySpan<float> extFactors, float magnitude, double factor)
    {
        RopeMath.CheckDim(rotaryDim);
        if (extFactors.Length != rotaryDim / 2)
            throw new ArgumentException($"longrope needs {rotaryDim / 2} factors (rotary dim / 2), got {extFactors.Length}", nameof(extFactors));
        var inv = new float[rotaryDim / 2];
        for (int j = 0; j < inv.Length; j++)
        {
            if (!(extFactors[j] > 0) || float.IsInfinity(extFactors[j]))
                throw new ArgumentOutOfRangeException(nameof(extFactors), extFactors[j], $"longrope factor {j} must be positive");
            inv[j] = 1f / (extFactors[j] * RopeMath.PosFreq(theta, j, rotaryDim));
        }
        return new RopeTable
        {
            Method = "longrope", InvFreq = inv, Magnitude = magnitude, Factor = factor,
            InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }

    /// <summary>
    /// transformers 5.x semantics: short factors while the sequence fits original_max_position_embeddings, long factors
    /// beyond; the magnitude comes from factor (or max/original) and does not change with length.
    /// </summary>
    public static RopeSchedule Schedule(int rotaryDim, double theta, LongRopeOptions o)
    {
        if (o.OriginalMaxPositions < 1) throw new ArgumentOutOfRangeException(nameof(o), "original_max_position_embeddings must be positive");
        double factor = o.Factor ?? o.MaxPositions / (double)o.OriginalMaxPositions;
        float magnitude = (float)(o.AttentionFactor ?? AttentionFactor(factor, o.OriginalMaxPositions));
        var shortTable = Build(rotaryDim, theta, o.ShortFactor, magnitude, factor);
        var longTable = Build(rotaryDim, theta, o.LongFactor, magnitude, factor);
        return new RopeSchedule(shortTable, seqLen => seqLen > o.OriginalMaxPositions ? longTable : shortTable);
    }
}

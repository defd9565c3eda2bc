// Llama 3.1's "llama3" scaling (ROPE.md 1.7): pairs with wavelength below L/high_freq_factor are kept, above
// L/low_freq_factor divided by factor, smoothly blended between; float32 like transformers.
// Example: Llama3Rope.Build(128, 500000, new Llama3Options(8, 1, 4, 8192)) keeps pairs 0..28, divides 35..63.
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>llama3 rope_parameters: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings.</summary>
public readonly record struct Llama3Options(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions);

/// <summary>Llama 3.1 frequency smoothing.</summary>
public static class Llama3Rope
{
    /// <summary>The llama3 table (magnitude 1).</summary>
    public static RopeTable Build(int rotaryDim, double theta, in Llama3Options o)
    {
        RopeMath.CheckFactor(o.Factor, "llama3 factor");
        if (!(o.HighFreqFactor > o.LowFreqFactor) || !(o.LowFreqFactor > 0))
            throw new ArgumentOutOfRangeException(nameof(o), "llama3 needs 0 < low_freq_factor < high_freq_factor");
        if (o.OriginalMaxPositions < 1) throw new ArgumentOutOfRangeException(nameof(o), "original_max_position_embeddings must be positive");
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        double lowWavelen = o.OriginalMaxPositions / o.LowFreqFactor;
        double highWavelen = o.OriginalMaxPositions / o.HighFreqFactor;
        float twoPi = (float)(2 * Math.PI);
        for (int j = 0; j < inv.Length; j++)
        {
            float f = inv[j];
            float wavelen = twoPi / f;
            if (wavelen < highWavelen) continue;
            if (wavelen > lowWavelen) { inv[j] = (float)(f / o.Factor); continue; }
            float smooth = (float)((float)(o.OriginalMaxPositions / (double)wavelen) - o.LowFreqFactor)
                / (float)(o.HighFreqFactor - o.LowFreqFactor);
            inv[j] = (float)((1f - smooth) * f / o.Factor) + smooth * f;
        }
        return new RopeTable
        {
            Method = "llama3", InvFreq = inv, Factor = o.Factor, InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }
}

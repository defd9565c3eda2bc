// Plain RoPE and linear position interpolation (PI): inv_freq = base^(-2j/d) / s (ROPE.md 1.1, 1.2).
// Example: PlainRope.Linear(128, 10000, 4).InvFreq[63] == 2.886955e-5.
using LlamaRun.Core;
namespace LlamaRun.Rope;

/// <summary>Plain RoPE and linear position interpolation.</summary>
public static class PlainRope
{
    /// <summary>Unscaled RoPE (transformers rope_type "default").</summary>
    public static RopeTable Default(int rotaryDim, double theta) =>
        new() { Method = "default", InvFreq = RopeMath.DefaultInvFreq(rotaryDim, theta) };

    /// <summary>Position interpolation by factor s: every pair turns s times slower (transformers "linear").</summary>
    public static RopeTable Linear(int rotaryDim, double theta, double factor)
    {
        RopeMath.CheckFactor(factor);
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        // transformers: inv_freq /= factor, a float32 tensor divided by a Python float.
        for (int j = 0; j < inv.Length; j++) inv[j] = (float)(inv[j] / factor);
        return new RopeTable
        {
            Method = "linear", InvFreq = inv, Factor = factor,
            InterpolatedPairs = RopeMath.CountInterpolated(inv, theta),
        };
    }
}

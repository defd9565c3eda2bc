// Shared float32 arithmetic of the RoPE producers, written to round where transformers' float32 tensors round
// (so tables match its inv_freq to about one ulp). Exercised by tests/RopeTableTests.cs.
namespace LlamaRun.Rope;

internal static class RopeMath
{
    /// <summary>The exponents 2j/dim as transformers computes them: arange(0, dim, 2).float() / dim in float32.</summary>
    public static float Exponent(int pair, int dim) => (2 * pair) / (float)dim;

    /// <summary>base ** (2j/dim) in float32 (torch raises the float32-cast base to a float32 exponent).</summary>
    public static float PosFreq(double theta, int pair, int dim) =>
        (float)Math.Pow((float)theta, Exponent(pair, dim));

    /// <summary>Plain RoPE: 1 / base^(2j/dim), float32 (transformers' default inv_freq).</summary>
    public static float[] DefaultInvFreq(int dim, double theta)
    {
        CheckDim(dim);
        if (!(theta > 1.0) || double.IsInfinity(theta))
            throw new ArgumentOutOfRangeException(nameof(theta), theta, "rope_theta must be a finite number above 1");
        var inv = new float[dim / 2];
        for (int j = 0; j < inv.Length; j++) inv[j] = 1f / PosFreq(theta, j, dim);
        return inv;
    }

    public static void CheckDim(int dim)
    {
        if (dim < 2 || dim % 2 != 0)
            throw new ArgumentOutOfRangeException(nameof(dim), dim, "rotary dimension must be even and at least 2");
    }

    public static void CheckFactor(double factor, string what = "factor")
    {
        if (!(factor >= 1.0) || double.IsInfinity(factor))
            throw new ArgumentOutOfRangeException(what, factor, $"{what} must be a finite number >= 1");
    }

    /// <summary>Pairs whose frequency is more than 1% below plain RoPE's with base theta.</summary>
    public static int CountInterpolated(ReadOnlySpan<float> invFreq, double theta)
    {
        var plain = DefaultInvFreq(invFreq.Length * 2, theta);
        int n = 0;
        for (int j = 0; j < plain.Length; j++)
            if (invFreq[j] < plain[j] / 1.01f) n++;
        return n;
    }

    /// <summary>YaRN's get_mscale: 0.1 m ln s + 1 for s above 1, else 1.</summary>
    public static double YarnMscale(double scale, double m = 1.0) => scale <= 1.0 ? 1.0 : 0.1 * m * Math.Log(scale) + 1.0;
}

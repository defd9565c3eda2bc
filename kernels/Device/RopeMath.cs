// The rotary formulas both the CPU op (engine/Backends/Cpu/CpuOps.Rope.cs) and the rope kernels call: cos/sin of the
// f32 angle f32(pos) * invFreq (as transformers computes it), evaluated in double and rounded to f32, so GPU and CPU
// agree to the last bit of the f32 tables; the query scale of entropy-aware ABF; one pair rotation.
// Tested against Math.Cos/Math.Sin by tests/KernelBitsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU.Algorithms;

namespace LlamaRun.Kernels.Device;

public static class RopeMath
{
    // pi/2 = C1 + C2 + C3: C1 and C2 carry 29 significant bits, so n * C1 and n * C2 are exact for n < 2^24.
    private const double C1 = 1.570796325802803, C2 = 9.920935774287987e-10, C3 = 2.2517417741562176e-18;
    private const double TwoOverPi = 0.6366197723675814;

    /// <summary>The f32 rotation angle of pair j at position pos, rounded as transformers' f32 product is.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Angle(int pos, float invFreq) => (float)pos * invFreq;

    /// <summary>The f32 angle of pair j at a fractional position (an index remap's grouped position); equals Angle(int) at whole ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Angle(float pos, float invFreq) => pos * invFreq;

    /// <summary>cos and sin of an f32 angle (|angle| below 2.6e7), computed in double and rounded to f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void CosSin(float angle, out float cos, out float sin)
    {
        // Cody-Waite reduction by pi/2, then Taylor polynomials on |r| <= pi/4 (truncation error below 1e-19).
        double x = angle;
        long n = (long)(x * TwoOverPi + (x >= 0 ? 0.5 : -0.5));
        double dn = n;
        double r = x - dn * C1 - dn * C2 - dn * C3, r2 = r * r;
        double s = r * (1 + r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (-1.0 / 39916800
            + r2 * (1.0 / 6227020800 + r2 * (-1.0 / 1307674368000 + r2 * (1.0 / 355687428096000)))))))));
        double c = 1 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800
            + r2 * (1.0 / 479001600 + r2 * (-1.0 / 87178291200 + r2 * (1.0 / 20922789888000 + r2 * (-1.0 / 6402373705728000)))))))));
        int q = (int)(n & 3);
        double cq = q == 0 ? c : q == 1 ? -s : q == 2 ? -c : s;
        double sq = q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
        cos = (float)cq;
        sin = (float)sq;
    }

    /// <summary>One pair (x0, x1) rotated by (cs, sn): x0 cs - x1 sn and x1 cs + x0 sn, every product and sum rounded by TR.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Rotate<TR>(float x0, float x1, float cs, float sn, out float y0, out float y1) where TR : struct, IRounding
    {
        var r = default(TR);
        y0 = r.Round(r.Round(x0 * cs) - r.Round(x1 * sn));
        y1 = r.Round(r.Round(x1 * cs) + r.Round(x0 * sn));
    }

    /// <summary>
    /// A pair rotated by (c0, s0) moved to rotation (c1, s1): undone with the exact inverse of (c0, s0) in double
    /// (dividing by c0^2 + s0^2, which also removes a magnitude), rounded to f32, which recovers the unrotated pair
    /// whenever its stored rounding error is under half an ulp; then rotated as Rotate does.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Rerotate(float a, float b, float c0, float s0, float c1, float s1, out float y0, out float y1)
    {
        double c = c0, s = s0, det = c * c + s * s;
        float u = (float)((c * a + s * b) / det), w = (float)((c * b - s * a) / det);
        Rotate<NoRounding>(u, w, c1, s1, out y0, out y1);
    }

    /// <summary>
    /// An index remap's grouped key position (ROPE.md 2, 6): floor(pos / g) for whole-number g (floor != 0, Self-Extend
    /// and DPE; integer division, exact), pos / g otherwise (Leaky ReRoPE), 0 for g = +inf (ReRoPE).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GroupedKey(int pos, float g, int floor) =>
        g == float.PositiveInfinity ? 0f : floor != 0 ? pos / (int)g : pos / g;

    /// <summary>The grouped query position: GroupedKey(pos) + window - window / g (window for g = +inf).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GroupedQuery(int pos, float g, int window, int floor) =>
        GroupedKey(pos, g, floor) + (g == float.PositiveInfinity ? window : window - window / g);

    /// <summary>Entropy-aware ABF's query multiplier max(1, ln(pos + 1) / ln(context)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float QueryScale(int pos, float context) => XMath.Max(1f, XMath.Log((float)(pos + 1)) / XMath.Log(context));
}

// An RMSNorm's sum of squares gathered across the groups of a grid by integer atomics, so that the total is the
// same bits whatever order the groups finish in (a float atomic add is not; the decode graphs replay bit for bit).
// A term (a group's partial sum, a non-negative float) is a 24-bit integer times a power of two; in units of 2^-64 it
// spans at most 24 bits somewhere in [0, 160), and it is added to the 40-bit chunks it covers: four u64 counters, each
// adding chunks of under 2^40, so up to 2^24 terms never overflow, and the sum of up to 2^13 terms is exact in a
// double. Terms under 2^-64 are dropped (a row's squares that small do not move its scale: eps is 1e-5 or more);
// terms of 2^96 or more, NaN and Inf count in a fifth counter, which makes the total NaN. The counters of one sum
// are zeroed before its first term (GpuBackend's norm slots). Exercised by tests/SquareSumsTests.cs, and on every
// device through the matmul_add_rmsnorm op cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;

namespace LlamaRun.Kernels.Device;

public static class SquareSums
{
    /// <summary>Counters of one sum: four 40-bit chunk counters and the count of terms out of range.</summary>
    public const int Words = 5;

    private const int ChunkBits = 40, Chunks = 4, Unit = 64;   // the value of bit 0: 2^-Unit
    private const ulong ChunkMask = (1UL << ChunkBits) - 1;

    /// <summary>Adds the term p (>= 0) to the counters sums[0 .. Words).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Add(ArrayView<ulong> sums, float p)
    {
        uint bits = Interop.FloatAsInt(p);
        int e = (int)(bits >> 23);                   // the sign bit makes it 256 or more
        if (e == 0) return;                          // zero or subnormal: under 2^-126
        int shift = e - 150 + Unit;                  // p = m 2^(e - 150), m the 24-bit significand
        if (e >= 255 || shift > Chunks * ChunkBits - 24)
        {
            Atomic.Add(ref sums[Chunks], 1UL);
            return;
        }
        ulong m = (bits & 0x7fffffu) | 0x800000u;
        if (shift < 0)
        {
            if (shift > -24) Atomic.Add(ref sums[0], m >> -shift);
            return;
        }
        int c = shift / ChunkBits, o = shift - c * ChunkBits;
        ulong v = m << o;                            // o < 40: under 2^64
        ulong lo = v & ChunkMask, hi = v >> ChunkBits;
        if (lo != 0) Atomic.Add(ref sums[c], lo);
        if (hi != 0) Atomic.Add(ref sums[c + 1], hi);
    }

    /// <summary>The counters at sums[0 .. Words), read (a GEMV loads them before its weights, to use after).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Counters Load(ArrayView<ulong> sums) => new(sums[0], sums[1], sums[2], sums[3], sums[4]);

    /// <summary>One sum's counters as read: the four chunk counters and the count of terms out of range.</summary>
    public readonly record struct Counters(ulong C0, ulong C1, ulong C2, ulong C3, ulong OutOfRange)
    {
        /// <summary>The sum of the terms, rounded to f32 (NaN if any was out of range).</summary>
        public float Total()
        {
            if (OutOfRange != 0) return float.NaN;
            // 2^-64, 2^-24, 2^16, 2^56: each product exact, the three additions in one fixed order.
            double t = C0 * 5.421010862427522e-20 + C1 * 5.9604644775390625e-8 + C2 * 65536.0 + C3 * 72057594037927936.0;
            return (float)t;
        }
    }
}

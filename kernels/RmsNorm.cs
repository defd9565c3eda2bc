// RMSNorm (CpuOps.RmsNorm): dst[r, :] = x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps)) * weight, one group per row
// (any multiple of 32 threads up to 1024). The sum of squares is accumulated in f32 per thread, then reduced over the
// group. Rows of n % 4 == 0 read and write 16 bytes at a time (the launcher checks alignment). AddRmsNorm fuses the
// residual add in front: x += y (rounded under bf16 compute, as a bf16 residual stream is), then dst = RmsNorm(x);
// dst may alias y. Under Bf16Rounding x * rsqrt(...) is rounded, then the product with the weight (LlamaRMSNorm in
// bf16). A row of at most one 16-byte vector a thread (a decoded token's, in a wide group) takes one step: x (and y)
// and the weight loaded at once and kept in registers across the reduction, where the loop reads x again and the
// weight only after it (H100, Llama-2-7B shape, alternated: tg128 203.48 / 203.73 t/s against 202.17 / 202.71, depth
// 16384 124.93 against 124.61). Exercised by the RmsNorm and AddRmsNorm cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>
/// An RMSNorm whose scale a GEMV applies to its sums (MatMulKernels' decode GEMVs after GemvBf16AddNorm): the GEMV's
/// input is x times the norm's weight, and the scale 1 / sqrt(mean(x^2) + eps) comes from the sum of squares that the
/// producing GEMV gathered (SquareSums, N values); On == 0: the input is normed already (scale 1).
/// </summary>
public readonly record struct DeferredNorm(int On, int N, float Eps)
{
    /// <summary>The counters of the sum at sums, read where the norm is on (zeros when off: not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public SquareSums.Counters Load(ArrayView<ulong> sums) => On != 0 ? SquareSums.Load(sums) : default;

    /// <summary>The scale from the sum's counters (1 when off).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Scale(SquareSums.Counters counters) => On != 0 ? RmsNormKernels.Scale(counters.Total(), N, Eps) : 1f;
}

public static class RmsNormKernels
{
    /// <summary>One normalized element: x times the row's scale r, times the weight (rounded as TR says).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Out<TR>(float x, float r, float w) where TR : struct, IRounding =>
        default(TR).Round(default(TR).Round(x * r) * w);

    /// <summary>The row's scale 1 / sqrt(mean square + eps): one definition for every RMSNorm kernel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scale(float sumSquares, int n, float eps) => 1f / XMath.Sqrt(sumSquares / n + eps);

    // The 16-byte paths' element ops: a vector's sum of squares, x + y rounded as TR says, and Out of each element.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float SumSquares(F4 v) => v.X * v.X + v.Y * v.Y + v.Z * v.Z + v.W * v.W;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static F4 Sum<TR>(F4 a, F4 b) where TR : struct, IRounding =>
        new(default(TR).Round(a.X + b.X), default(TR).Round(a.Y + b.Y), default(TR).Round(a.Z + b.Z), default(TR).Round(a.W + b.W));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static F4 Out<TR>(F4 v, float r, F4 w) where TR : struct, IRounding =>
        new(Out<TR>(v.X, r, w.X), Out<TR>(v.Y, r, w.Y), Out<TR>(v.Z, r, w.Z), Out<TR>(v.W, r, w.W));

    // kernels

    /// <summary>Rows of any length.</summary>
    public static void RmsNorm<TR>(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> dst, int n, float eps)
        where TR : struct, IRounding
    {
        var scratch = SharedMemory.Allocate<float>(32);
        long row = (long)Grid.IdxX * n;
        float ss = 0f;
        for (int i = Group.IdxX; i < n; i += Group.DimX)
        {
            float v = x[row + i];
            ss += v * v;
        }
        float r = Scale(Reduce.GroupSum(ss, scratch), n, eps);
        for (int i = Group.IdxX; i < n; i += Group.DimX) dst[row + i] = Out<TR>(x[row + i], r, weight[i]);
    }

    /// <summary>Rows of n % 4 == 0 floats, as 16-byte vectors (x, weight and dst viewed as F4, n4 = n / 4).</summary>
    public static void RmsNorm4<TR>(ArrayView<F4> x, ArrayView<F4> weight, ArrayView<F4> dst, int n4, float eps)
        where TR : struct, IRounding
    {
        var scratch = SharedMemory.Allocate<float>(32);
        long row = (long)Grid.IdxX * n4;
        if (n4 <= Group.DimX)
        {
            // One vector a thread (a decoded token's row in one group): x and the weight loaded at once, x kept in registers.
            int j = Group.IdxX;
            bool on = j < n4;
            F4 u = on ? x[row + j] : default, wj = on ? weight[j] : default;
            float rj = Scale(Reduce.GroupSum(SumSquares(u), scratch), 4 * n4, eps);
            if (on) dst[row + j] = Out<TR>(u, rj, wj);
            return;
        }
        float ss = 0f;
        for (int i = Group.IdxX; i < n4; i += Group.DimX) ss += SumSquares(x[row + i]);
        float r = Scale(Reduce.GroupSum(ss, scratch), 4 * n4, eps);
        for (int i = Group.IdxX; i < n4; i += Group.DimX) dst[row + i] = Out<TR>(x[row + i], r, weight[i]);
    }

    /// <summary>x += y, then dst = RmsNorm(x); rows of n % 4 == 0 floats as F4 vectors; dst may alias y.</summary>
    public static void AddRmsNorm4<TR>(ArrayView<F4> x, ArrayView<F4> y, ArrayView<F4> weight, ArrayView<F4> dst, int n4, float eps)
        where TR : struct, IRounding
    {
        var scratch = SharedMemory.Allocate<float>(32);
        long row = (long)Grid.IdxX * n4;
        if (n4 <= Group.DimX)
        {
            // One vector a thread (a decoded token's row in one group): x, y and the weight loaded at once, the sum kept
            // in registers. GroupSum's barriers order every thread's read of y before any write of dst.
            int j = Group.IdxX;
            bool on = j < n4;
            F4 a0 = on ? x[row + j] : default, b0 = on ? y[row + j] : default, wj = on ? weight[j] : default;
            var u = Sum<TR>(a0, b0);
            if (on) x[row + j] = u;
            float rj = Scale(Reduce.GroupSum(SumSquares(u), scratch), 4 * n4, eps);
            if (on) dst[row + j] = Out<TR>(u, rj, wj);
            return;
        }
        float ss = 0f;
        for (int i = Group.IdxX; i < n4; i += Group.DimX)
        {
            var v = Sum<TR>(x[row + i], y[row + i]);
            x[row + i] = v;
            ss += SumSquares(v);
        }
        // GroupSum's barriers also order every thread's reads of y before any write of dst (which may alias y).
        float r = Scale(Reduce.GroupSum(ss, scratch), 4 * n4, eps);
        for (int i = Group.IdxX; i < n4; i += Group.DimX) dst[row + i] = Out<TR>(x[row + i], r, weight[i]);
    }

    /// <summary>One row of n: x *= the scale of a deferred norm (GpuBackend settling a GemvBf16AddNorm's output read by another op).</summary>
    public static void ScaleDeferred(ArrayView<float> x, ArrayView<ulong> sums, DeferredNorm norm, int n)
    {
        float r = norm.Scale(norm.Load(sums));
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX) x[i] *= r;
    }

    /// <summary>x += y, then dst = RmsNorm(x), rows of any length; dst may alias y.</summary>
    public static void AddRmsNorm<TR>(ArrayView<float> x, ArrayView<float> y, ArrayView<float> weight, ArrayView<float> dst, int n, float eps)
        where TR : struct, IRounding
    {
        var scratch = SharedMemory.Allocate<float>(32);
        long row = (long)Grid.IdxX * n;
        float ss = 0f;
        for (int i = Group.IdxX; i < n; i += Group.DimX)
        {
            float v = default(TR).Round(x[row + i] + y[row + i]);
            x[row + i] = v;
            ss += v * v;
        }
        float r = Scale(Reduce.GroupSum(ss, scratch), n, eps);
        for (int i = Group.IdxX; i < n; i += Group.DimX) dst[row + i] = Out<TR>(x[row + i], r, weight[i]);
    }
}

// Rounding and conversion of f32 activations (CpuOps.Round): Round rounds x in place to the nearest bf16 or f16
// value (as a framework computing in that type stores it); ToBf16 converts activations to bf16 for the cuBLAS prefill
// GEMM (the same rounding as the tensor-core GEMM's operand loads); Widen converts bf16 or f16 weights to f32 exactly
// for the full-precision GEMM. Grid-stride loops, any grid and group size. Exercised by the Round cases of
// tests/GpuOpsTests.cs and, through MatMul, its GEMM cases.
using ILGPU;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

public static class RoundKernels
{
    // kernels

    /// <summary>x[i] = value of type TE nearest to x[i] (TE: Bf16Element or F16Element).</summary>
    public static void Round<TE>(ArrayView<float> x, long n) where TE : struct, IElement<ushort>
    {
        for (long i = Grid.GlobalIndex.X; i < n; i += (long)Grid.DimX * Group.DimX) x[i] = default(TE).Load(default(TE).Store(x[i]));
    }

    /// <summary>dst[i] = bf16(x[i]) for i &lt; n, round to nearest even; vector 1: x 16-byte and dst 8-byte aligned, 4 at a time.</summary>
    public static void ToBf16(ArrayView<float> x, ArrayView<ushort> dst, long n, int vector)
    {
        long stride = (long)Grid.DimX * Group.DimX, done = 0;
        if (vector != 0)
        {
            var x4 = x.Cast<F4>();
            var d4 = dst.Cast<ulong>();
            for (long i = Grid.GlobalIndex.X; i < n / 4; i += stride)
            {
                F4 v = x4[i];
                d4[i] = Bf16.Pack(v.X, v.Y) | ((ulong)Bf16.Pack(v.Z, v.W) << 32);
            }
            done = n / 4 * 4;
        }
        for (long i = done + Grid.GlobalIndex.X; i < n; i += stride) dst[i] = Bf16.FromF32(x[i]);
    }

    /// <summary>dst[i] = src[i] widened exactly to f32 (TE: Bf16Element or F16Element).</summary>
    public static void Widen<TE>(ArrayView<ushort> src, ArrayView<float> dst, long n) where TE : struct, IElement<ushort>
    {
        for (long i = Grid.GlobalIndex.X; i < n; i += (long)Grid.DimX * Group.DimX) dst[i] = default(TE).Load(src[i]);
    }
}

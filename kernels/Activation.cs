// Element-wise ops (CpuOps.Activation): SwiGlu dst = silu(gate) * up and Add dst = x + y, grid-stride loops over n
// elements (any grid and group size), 16 bytes at a time where the views allow; dst may alias an input. Under Bf16Rounding SwiGlu rounds silu(gate) and the
// product, as torch's silu and mul do in bf16. Exercised by the SwiGlu and Add cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

public static class ActivationKernels
{
    /// <summary>silu(g) * u, rounded as TR says: the one definition the element-wise kernel and the fused GEMV use.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Silu<TR>(float g, float u) where TR : struct, IRounding =>
        default(TR).Round(default(TR).Round(g / (1f + XMath.Exp(-g))) * u);

    // kernels

    /// <summary>vector 1: the views are 16-byte aligned, so all but the last n % 4 elements go 4 at a time.</summary>
    public static void SwiGlu<TR>(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst, long n, int vector)
        where TR : struct, IRounding
    {
        long stride = (long)Grid.DimX * Group.DimX, done = 0;
        if (vector != 0)
        {
            var g4 = gate.Cast<F4>();
            var u4 = up.Cast<F4>();
            var d4 = dst.Cast<F4>();
            for (long i = Grid.GlobalIndex.X; i < n / 4; i += stride)
            {
                F4 g = g4[i], u = u4[i];
                d4[i] = new F4(Silu<TR>(g.X, u.X), Silu<TR>(g.Y, u.Y), Silu<TR>(g.Z, u.Z), Silu<TR>(g.W, u.W));
            }
            done = n / 4 * 4;
        }
        for (long i = done + Grid.GlobalIndex.X; i < n; i += stride) dst[i] = Silu<TR>(gate[i], up[i]);
    }

    /// <summary>vector 1: the views are 16-byte aligned, so all but the last n % 4 elements go 4 at a time.</summary>
    public static void Add(ArrayView<float> x, ArrayView<float> y, ArrayView<float> dst, long n, int vector)
    {
        long stride = (long)Grid.DimX * Group.DimX, done = 0;
        if (vector != 0)
        {
            var x4 = x.Cast<F4>();
            var y4 = y.Cast<F4>();
            var d4 = dst.Cast<F4>();
            for (long i = Grid.GlobalIndex.X; i < n / 4; i += stride)
            {
                F4 a = x4[i], b = y4[i];
                d4[i] = new F4(a.X + b.X, a.Y + b.Y, a.Z + b.Z, a.W + b.W);
            }
            done = n / 4 * 4;
        }
        for (long i = done + Grid.GlobalIndex.X; i < n; i += stride) dst[i] = x[i] + y[i];
    }
}

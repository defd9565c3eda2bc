// Element-wise ops (CpuOps.Activation): SwiGlu dst = silu(gate) * up and Add dst = x + y, grid-stride loops over n
// elements (any grid and group size); dst may alias an input. Under Bf16Rounding SwiGlu rounds silu(gate) and the
// product, as torch's silu and mul do in bf16. Exercised by the SwiGlu and Add cases of tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

public static class ActivationKernels
{
    // kernels

    public static void SwiGlu<TR>(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst, long n)
        where TR : struct, IRounding
    {
        for (long i = Grid.GlobalIndex.X; i < n; i += (long)Grid.DimX * Group.DimX)
        {
            float g = gate[i];
            dst[i] = default(TR).Round(default(TR).Round(g / (1f + XMath.Exp(-g))) * up[i]);
        }
    }

    public static void Add(ArrayView<float> x, ArrayView<float> y, ArrayView<float> dst, long n)
    {
        for (long i = Grid.GlobalIndex.X; i < n; i += (long)Grid.DimX * Group.DimX) dst[i] = x[i] + y[i];
    }
}

// Argmax of each row of logits (CpuOps.Argmax): the index of the largest element, the first on ties, and a NaN
// counts as larger than any number (ArgmaxRule, shared with the CPU and the sampler). One group per row (a multiple
// of 32 threads); each thread keeps its best (value, index), then warp shuffles and shared memory merge them.
// Exercised by the Argmax cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;

namespace LlamaRun.Kernels;

/// <summary>The one argmax order of llama-run: NaN above every number, then larger values, then smaller indices.</summary>
public static class ArgmaxRule
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Better(float a, int ia, float b, int ib)
    {
        bool na = XMath.IsNaN(a), nb = XMath.IsNaN(b);
        if (na || nb) return na && (!nb || ia < ib);
        return a > b || (a == b && ia < ib);
    }
}

public static class ArgmaxKernels
{
    // kernels

    public static void Argmax(ArrayView<float> x, ArrayView<int> dst, int cols)
    {
        var bestValue = SharedMemory.Allocate<float>(32);
        var bestIndex = SharedMemory.Allocate<int>(32);
        long row = (long)Grid.IdxX * cols;
        float v = float.NegativeInfinity;
        int idx = int.MaxValue;
        for (int i = Group.IdxX; i < cols; i += Group.DimX)
        {
            float e = x[row + i];
            if (ArgmaxRule.Better(e, i, v, idx))
            {
                v = e;
                idx = i;
            }
        }
        for (int o = 16; o > 0; o >>= 1)
        {
            float ov = Warp.ShuffleXor(v, o);
            int oi = Warp.ShuffleXor(idx, o);
            if (ArgmaxRule.Better(ov, oi, v, idx))
            {
                v = ov;
                idx = oi;
            }
        }
        if (Warp.LaneIdx == 0)
        {
            bestValue[Warp.WarpIdx] = v;
            bestIndex[Warp.WarpIdx] = idx;
        }
        Group.Barrier();
        if (Group.IdxX == 0)
        {
            for (int w = 1; w < Group.DimX / Warp.WarpSize; w++)
                if (ArgmaxRule.Better(bestValue[w], bestIndex[w], v, idx))
                {
                    v = bestValue[w];
                    idx = bestIndex[w];
                }
            dst[Grid.IdxX] = idx == int.MaxValue ? 0 : idx;
        }
    }
}

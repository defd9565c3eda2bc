// Embedding lookup (CpuOps.Embedding): dst[t, :] = table[tokens[t], :] as f32, for f32, bf16 and f16 tables.
// Grid (ceil(hidden / group), min(tokens, 65535)), any group size; grid-stride over tokens. Token ids were
// range-checked on the host. Exercised by the Embedding cases of tests/GpuOpsTests.cs.
using ILGPU;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

public static class EmbeddingKernels
{
    // kernels

    public static void Embedding<TW, TE>(ArrayView<int> tokens, ArrayView<TW> table, ArrayView<float> dst, int numTokens, int hidden)
        where TW : unmanaged
        where TE : struct, IElement<TW>
    {
        int i = Grid.IdxX * Group.DimX + Group.IdxX;
        if (i >= hidden) return;
        for (int t = Grid.IdxY; t < numTokens; t += Grid.DimY)
            dst[(long)t * hidden + i] = default(TE).Load(table[(long)tokens[t] * hidden + i]);
    }
}

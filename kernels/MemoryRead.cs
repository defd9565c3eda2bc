// A pure-read kernel: the device memory read bandwidth that decode (weights and KV cache read once a token) is judged
// against in `llama-run bench`. Every thread reads 16-byte vectors in a grid-stride loop and folds them by XOR (so no
// load can be dropped); one lane a warp XORs its warp's fold into dst[0]. Host side: GpuBackend.ReadProbe.
// Exercised by GpuOpsTests.ReadProbeReadsEveryVector.
using ILGPU;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

public static class MemoryReadKernels
{
    // kernels

    /// <summary>dst[0] ^= the XOR of every 32-bit word of src (dst zeroed by the caller).</summary>
    public static void Read(ArrayView<U4> src, ArrayView<uint> dst)
    {
        uint acc = 0;
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < src.Length; i += stride)
        {
            var v = src[i];
            acc ^= v.X ^ v.Y ^ v.Z ^ v.W;
        }
        for (int o = 16; o > 0; o >>= 1) acc ^= Warp.ShuffleXor(acc, o);
        if (Warp.LaneIdx == 0) Atomic.Xor(ref dst[0], acc);
    }
}

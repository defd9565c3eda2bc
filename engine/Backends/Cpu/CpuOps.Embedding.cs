// CPU embedding gather: dst[t, :] = table[tokens[t], :] converted to f32 (BF16 by a 16-bit shift, F16 via Half).
// Test: CpuOpsTests.Embedding* (every dtype, hidden sizes 0..256).
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Reference CPU implementations of every op; each file holds one op family and mirrors the GPU kernels of kernels/mirrors kernels/&lt;family&gt;.cu.lt;Familymirrors kernels/&lt;family&gt;.cu.gt;.cs.</summary>
public static unsafe partial class CpuOps
{
    /// <summary>dst[t, :] = table[tokens[t], :] as f32; table is [vocab, hidden] of tableType, ids are not range-checked here.</summary>
    public static void Embedding(ReadOnlySpan<int> tokens, void* table, float* dst, DType tableType, int hidden)
    {
        int size = tableType.Size();
        for (int t = 0; t < tokens.Length; t++)
        {
            byte* row = (byte*)table + (nint)tokens[t] * hidden * size;
            float* d = dst + (nint)t * hidden;
            switch (tableType)
            {
                case DType.F32:
                    new ReadOnlySpan<float>(row, hidden).CopyTo(new Span<float>(d, hidden));
                    break;
                case DType.BF16:
                    ConvertBf16(row, d, hidden);
                    break;
                default:
                    TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(row, hidden), new Span<float>(d, hidden));
                    break;
            }
        }
    }

    // bf16 -> f32 is exact: the bf16 bits are the top half of the f32 bits.
    internal static void ConvertBf16(void* src, float* dst, int n)
    {
        int i = 0;
        for (; i <= n - 8; i += 8) Bf16Row.Load8(src, i).Store(dst + i);
        for (; i < n; i++) dst[i] = DTypes.BF16ToF32(((ushort*)src)[i]);
    }
}

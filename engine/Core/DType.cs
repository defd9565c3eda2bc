// Element types of weights and activations, and the bit-level conversions between them.
// bf16 and f16 are converted by bit operations so the CPU and the CUDA kernels round identically.
using System.Runtime.CompilerServices;

namespace LlamaRun.Core;

/// <summary>Element type of a tensor as stored in a checkpoint or on a device.</summary>
public enum DType { F32, F16, BF16 }

/// <summary>Sizes and scalar conversions for <see cref="DType"/>.</summary>
public static class DTypes
{
    public static int Size(this DType t) => t == DType.F32 ? 4 : 2;

    public static string Name(this DType t) => t switch { DType.F32 => "F32", DType.F16 => "F16", _ => "BF16" };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToF32(ushort b) => BitConverter.Int32BitsToSingle(b << 16);

    /// <summary>Round-to-nearest-even f32 to bf16, NaN kept quiet (as torch does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToBF16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 0x40);
        u += 0x7fff + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16ToF32(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToF16(float f) => BitConverter.HalfToUInt16Bits((Half)f);
}

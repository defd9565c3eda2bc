// Element types of weights and activations, and the bit-level conversions between them: the kernels' own
// (kernels/Device/Bits.cs), so the CPU and the GPU kernels round identically.
using System.Runtime.CompilerServices;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Core;

/// <summary>Element type of a tensor as stored in a checkpoint or on a device.</summary>
public enum DType { F32, F16, BF16 }

/// <summary>Sizes and scalar conversions for <see cref="DType"/>.</summary>
public static class DTypes
{
    public static int Size(this DType t) => t == DType.F32 ? 4 : 2;

    public static string Name(this DType t) => t switch { DType.F32 => "F32", DType.F16 => "F16", _ => "BF16" };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToF32(ushort b) => Bf16.ToF32(b);

    /// <summary>Round-to-nearest-even f32 to bf16, NaN kept quiet (as torch does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToBF16(float f) => Bf16.FromF32(f);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16ToF32(ushort h) => F16.ToF32(h);

    /// <summary>Round-to-nearest-even f32 to f16 (IEEE binary16, as System.Half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToF16(float f) => F16.FromF32(f);
}

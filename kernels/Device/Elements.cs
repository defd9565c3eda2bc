// Compile-time choices that kernels are specialised on, as struct type parameters (ILGPU inlines default(T).M(...)):
// the element type of a weight table or KV cache (IElement: f32, bf16 or f16 bits; one value, or four in one store) and the rounding of an op's
// intermediates (IRounding: none, or bf16 / f16 as a framework computing in that type stores them); 16-byte vectors.
// Exercised through every kernel by tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ILGPU;

namespace LlamaRun.Kernels.Device;

/// <summary>How a stored element of type T reads as f32 and how an f32 is stored.</summary>
public interface IElement<T> where T : unmanaged
{
    float Load(T v);
    T Store(float f);

    /// <summary>Elements index .. index + 3 of view (index % 4 == 0, the view 4-element aligned) set to v in one store.</summary>
    void Store4(ArrayView<T> view, long index, F4 v);
}

public readonly struct F32Element : IElement<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Load(float v) => v;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Store(float f) => f;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public void Store4(ArrayView<float> view, long index, F4 v) => view.Cast<F4>()[index / 4] = v;
}

public readonly struct Bf16Element : IElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Load(ushort v) => Bf16.ToF32(v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public ushort Store(float f) => Bf16.FromF32(f);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store4(ArrayView<ushort> view, long index, F4 v) => view.Cast<ulong>()[index / 4] = Pack4(Store(v.X), Store(v.Y), Store(v.Z), Store(v.W));

    /// <summary>Four 16-bit values as one 8-byte word, a first (lowest address).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Pack4(ushort a, ushort b, ushort c, ushort d) => a | ((ulong)b << 16) | ((ulong)c << 32) | ((ulong)d << 48);
}

public readonly struct F16Element : IElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Load(ushort v) => F16.ToF32(v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public ushort Store(float f) => F16.FromF32(f);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store4(ArrayView<ushort> view, long index, F4 v) => view.Cast<ulong>()[index / 4] = Bf16Element.Pack4(Store(v.X), Store(v.Y), Store(v.Z), Store(v.W));
}

/// <summary>Rounding of an op's intermediate values to its compute type.</summary>
public interface IRounding
{
    float Round(float f);
}

/// <summary>f32 compute: nothing is rounded.</summary>
public readonly struct NoRounding : IRounding
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Round(float f) => f;
}

/// <summary>bf16 compute: every intermediate is rounded to the nearest bf16 value.</summary>
public readonly struct Bf16Rounding : IRounding
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Round(float f) => Bf16.Round(f);
}

/// <summary>f16 compute (a CPU reference feature): every intermediate is rounded to the nearest f16 value.</summary>
public readonly struct F16Rounding : IRounding
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public float Round(float f) => F16.Round(f);
}

/// <summary>Four 32-bit words: one 16-byte load or store (8 bf16 values, or 4 floats as bits).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct U4
{
    public uint X, Y, Z, W;
}

/// <summary>Four floats: one 16-byte load or store.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct F4
{
    public float X, Y, Z, W;

    public F4(float x, float y, float z, float w)
    {
        X = x;
        Y = y;
        Z = z;
        W = w;
    }
}

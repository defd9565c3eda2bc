// Typed ILGPU views of GPU tensors (DESIGN R4): a tensor's bytes reinterpreted as f32, bf16/f16 bits, or 16-byte
// vectors, and its device address for the kernels whose inline PTX reads global memory directly (cp.async).
// Exercised through every launcher of GpuKernels by tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Runtime;
using LlamaRun.Core;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Backends.Gpu;

internal static class GpuViews
{
    public static ArrayView<float> F32(Tensor t) => Bytes(t).Cast<float>();

    public static ArrayView<ushort> U16(Tensor t) => Bytes(t).Cast<ushort>();

    public static ArrayView<int> I32(ArrayView<byte> bytes) => bytes.Cast<int>();

    /// <summary>An f32 tensor as 16-byte vectors; the caller checked Aligned16.</summary>
    public static ArrayView<F4> F4(Tensor t) => Bytes(t).Cast<F4>();

    /// <summary>A bf16 tensor as 16-byte vectors of 8 values; the caller checked Aligned16.</summary>
    public static ArrayView<U4> U4(Tensor t) => Bytes(t).Cast<U4>();

    /// <summary>A bf16 tensor as 16-byte vectors read once (a GEMV's weight rows), with its address; the caller checked Aligned16.</summary>
    public static StreamedU4 Streamed(Tensor t) => StreamedU4.Of(U4(t));

    /// <summary>The device address of the tensor's first element (the host address on ILGPU's CPU accelerator).</summary>
    public static ulong Address(Tensor t) => (ulong)Bytes(t).LoadEffectiveAddressAsPtr();

    public static bool Aligned16(Tensor a, Tensor b) => Aligned16(a) && Aligned16(b);

    public static bool Aligned16(Tensor a, Tensor b, Tensor c) => Aligned16(a) && Aligned16(b) && Aligned16(c);

    public static bool Aligned16(Tensor a, Tensor b, Tensor c, Tensor d) => Aligned16(a, b) && Aligned16(c, d);

    private static bool Aligned16(Tensor t) => Address(t) % 16 == 0 && t.Bytes.Length % 16 == 0;

    private static ArrayView<byte> Bytes(Tensor t)
    {
        if (!t.OnAccelerator) throw new ArgumentException($"{t} is a host tensor, not a GPU one");
        return t.Bytes;
    }
}

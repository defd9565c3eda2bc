// Rows a kernel reads once, that nothing writes while it runs (decode's weight rows), read in 16-byte vectors: on CUDA
// by ld.global.nc.L1::no_allocate (the read-only path, keeping no line in L1, so the activations every warp of a GEMV
// rereads stay there); on ILGPU's CPU accelerator by a plain load. ILGPU gives a kernel no address of a view's element,
// so the view carries its device address, taken on the host. The address enters the inline PTX as two 32-bit halves:
// as one 64-bit operand ptxas kept every operand of the load in local memory (256 bytes of stack a thread) and the GEMV
// ran 8-12% slower than without the hint. H100, ILGPU's GEMV with plain loads and with these, the weights rotated
// through 16 copies (GB/s): 4096x4096 2,416 / 2,510, 12288x4096 2,869 / 2,928, 22016x4096 3,012 / 3,047, 4096x11008
// 2,398 / 2,648, 32000x4096 3,075 / 3,102.
// Exercised through the GEMVs by tests/GpuOpsTests.cs, which also checks the CUDA PTX for the load (as the loader does).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace LlamaRun.Kernels.Device;

/// <summary>A view of 16-byte vectors read once, with its first element's device address (host-made: see Of).</summary>
public readonly struct StreamedU4
{
    public readonly ArrayView<U4> View;
    public readonly long Address;

    private StreamedU4(ArrayView<U4> view, long address)
    {
        View = view;
        Address = address;
    }

    /// <summary>The view and its address (on the host; the host address on ILGPU's CPU accelerator, where it is not used).</summary>
    public static StreamedU4 Of(ArrayView<U4> view) => new(view, view.Length == 0 ? 0 : view.LoadEffectiveAddressAsPtr().ToInt64());

    /// <summary>Element index.</summary>
    public U4 this[long index]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Load(index, AddressOf(index));
    }

    /// <summary>The device address of element index (CUDA; for Load).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long AddressOf(long index) => Address + 16 * index;

    /// <summary>
    /// Element index, whose device address (AddressOf) the caller keeps as well, stepping it along with the
    /// index: on CUDA only the address is used (the index's arithmetic goes), on the CPU accelerator only the index.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public U4 Load(long index, long address)
    {
        if (!CudaAsm.IsSupported) return View[index];
        Output<uint> x = default, y = default, z = default, w = default;
        Input<uint> lo = (uint)address, hi = (uint)(address >> 32);
        CudaAsm.EmitRef("{ .reg .b64 a; mov.b64 a, {%4, %5}; ld.global.nc.L1::no_allocate.v4.b32 {%0,%1,%2,%3}, [a]; }",
            ref x, ref y, ref z, ref w, ref lo, ref hi);
        return new U4 { X = x.Value, Y = y.Value, Z = z.Value, W = w.Value };
    }
}

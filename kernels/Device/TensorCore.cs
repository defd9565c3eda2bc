// Tensor-core fragments of mma.sync.m16n8k16 (bf16 in, f32 accumulate) and ldmatrix, in the layouts of the PTX ISA:
// lane = 4g + t; A (16x16, row major) a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// B (16x8, k by n) b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; C (16x8 f32) c0, c1 = C[g][2t], C[g][2t+1], c2, c3 = row g+8.
// Each pair of bf16 sits in one 32-bit word, the lower index in the low half. Two implementations of ITensorCores, which
// kernels take as a type parameter: PtxTensorCores (CUDA: each helper one inline-PTX instruction) and
// EmulatedTensorCores (ILGPU's CPU accelerator: the lanes exchange fragments and row addresses through a per-warp scratch
// at the end of the dynamic shared memory, between warp barriers, a hundred times faster there than warp shuffles).
// A type parameter rather than a CudaAsm.IsSupported branch: ILGPU keeps dead branches in the PTX, which doubled a
// flash kernel's PTX and the driver's compile time. Exercised by the MatMul and Attention cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace LlamaRun.Kernels.Device;

/// <summary>The f32 accumulator fragment of one 16x8 tile.</summary>
public struct Acc
{
    public float C0, C1, C2, C3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scale(float top, float bottom)
    {
        C0 *= top;
        C1 *= top;
        C2 *= bottom;
        C3 *= bottom;
    }
}

/// <summary>The A fragment of one 16x16 bf16 tile.</summary>
public struct FragA
{
    public uint A0, A1, A2, A3;
}

/// <summary>
/// mma and ldmatrix for a kernel. Addresses are SharedBase() plus a byte offset into the kernel's dynamic shared
/// memory smem; scratch is Scratch(smem, offset of the end of the kernel's own shared data).
/// </summary>
public interface ITensorCores
{
    /// <summary>The .shared address of the dynamic shared memory (0 where byte offsets index the view).</summary>
    uint SharedBase();

    /// <summary>The emulation's exchange space: the dynamic shared memory from byte offset `offset` on (empty on CUDA).</summary>
    ArrayView<uint> Scratch(ArrayView<ushort> smem, int offset);

    /// <summary>c += A * B for one 16x8x16 step; b0, b1 are the B fragment.</summary>
    void Mma(ref Acc c, in FragA a, uint b0, uint b1, ArrayView<uint> scratch);

    /// <summary>
    /// ldmatrix.x4: four 8x8 b16 matrices; lane l supplies the address of row l % 8 of matrix l / 8; rj receives matrix
    /// j's row l / 4, elements 2(l % 4) and 2(l % 4) + 1. Rows are 16 bytes, 16-byte aligned.
    /// </summary>
    void LdmatrixX4(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3);

    /// <summary>
    /// ldmatrix.x4.trans: each matrix transposed: rj receives elements (2(l % 4), l / 4) and (2(l % 4) + 1, l / 4) of
    /// matrix j (row, column), i.e. a B fragment of a row-major [k][n] tile.
    /// </summary>
    void LdmatrixX4Trans(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3);
}

/// <summary>The inline-PTX tensor cores of CUDA GPUs of compute capability 8.0 and newer.</summary>
public readonly struct PtxTensorCores : ITensorCores
{
    /// <remarks>ILGPU names every dynamic shared allocation of a kernel __dyn_shared_alloca (its PTX code generator);
    /// ldmatrix takes 32-bit shared addresses (DESIGN R5: 64-bit ones cost registers and stack).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint SharedBase()
    {
        CudaAsm.Emit("mov.u32 %0, __dyn_shared_alloca;", out uint address);
        return address;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ArrayView<uint> Scratch(ArrayView<ushort> smem, int offset) => default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Mma(ref Acc c, in FragA a, uint b0, uint b1, ArrayView<uint> scratch)
    {
        Ref<float> c0 = c.C0, c1 = c.C1, c2 = c.C2, c3 = c.C3;
        Input<uint> a0 = a.A0, a1 = a.A1, a2 = a.A2, a3 = a.A3, x0 = b0, x1 = b1;
        CudaAsm.EmitRef(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
            ref c0, ref c1, ref c2, ref c3, ref a0, ref a1, ref a2, ref a3, ref x0, ref x1);
        c.C0 = c0.Value;
        c.C1 = c1.Value;
        c.C2 = c2.Value;
        c.C3 = c3.Value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void LdmatrixX4(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        Output<uint> o0 = default, o1 = default, o2 = default, o3 = default;
        Input<uint> a = address;
        CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];", ref o0, ref o1, ref o2, ref o3, ref a);
        r0 = o0.Value;
        r1 = o1.Value;
        r2 = o2.Value;
        r3 = o3.Value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void LdmatrixX4Trans(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        Output<uint> o0 = default, o1 = default, o2 = default, o3 = default;
        Input<uint> a = address;
        CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];", ref o0, ref o1, ref o2, ref o3, ref a);
        r0 = o0.Value;
        r1 = o1.Value;
        r2 = o2.Value;
        r3 = o3.Value;
    }
}

/// <summary>The documented fragment layouts computed with plain loads, shared memory and warp barriers (any accelerator).</summary>
public readonly struct EmulatedTensorCores : ITensorCores
{
    private const int ScratchWords = 6 * 32;   // per warp: the A (4) and B (2) words of every lane
    private const int MaxWarps = 8;

    /// <summary>Dynamic shared memory the emulation needs after a kernel's own.</summary>
    public const int ScratchBytes = MaxWarps * ScratchWords * 4;

    public uint SharedBase() => 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ArrayView<uint> Scratch(ArrayView<ushort> smem, int offset) => smem.SubView(offset / 2, ScratchBytes / 2).Cast<uint>();

    public void Mma(ref Acc c, in FragA a, uint b0, uint b1, ArrayView<uint> scratch)
    {
        // Lane (g, t) needs rows g and g+8 of A (held by lanes 4g..4g+3) and columns 2t, 2t+1 of B (held by lanes
        // 8t..8t+3 and 8t+4..8t+7): every lane publishes its fragments, then reads those, a k-quarter (source t' = kt) at a time.
        int lane = Warp.LaneIdx, w = Warp.WarpIdx * ScratchWords, g = lane >> 2, t = lane & 3;
        scratch[w + lane] = a.A0;
        scratch[w + 32 + lane] = a.A1;
        scratch[w + 64 + lane] = a.A2;
        scratch[w + 96 + lane] = a.A3;
        scratch[w + 128 + lane] = b0;
        scratch[w + 160 + lane] = b1;
        Warp.Barrier();
        for (int kt = 0; kt < 4; kt++)
        {
            int ra = w + 4 * g + kt, pb = w + 128 + 8 * t + kt, qb = pb + 4;
            uint r0 = scratch[ra], r1 = scratch[ra + 32], r2 = scratch[ra + 64], r3 = scratch[ra + 96];
            uint p0 = scratch[pb], p1 = scratch[pb + 32], q0 = scratch[qb], q1 = scratch[qb + 32];
            c.C0 += Dot2(r0, p0) + Dot2(r2, p1);
            c.C1 += Dot2(r0, q0) + Dot2(r2, q1);
            c.C2 += Dot2(r1, p0) + Dot2(r3, p1);
            c.C3 += Dot2(r1, q0) + Dot2(r3, q1);
        }
        Warp.Barrier();   // the scratch is free for the next exchange
    }

    private static float Dot2(uint x, uint y) => Bf16.Lo(x) * Bf16.Lo(y) + Bf16.Hi(x) * Bf16.Hi(y);

    public void LdmatrixX4(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        int lane = Warp.LaneIdx, w = Publish(scratch, address), col = 2 * (lane & 3), row = w + (lane >> 2);
        r0 = Word(smem, scratch[row], col);
        r1 = Word(smem, scratch[row + 8], col);
        r2 = Word(smem, scratch[row + 16], col);
        r3 = Word(smem, scratch[row + 24], col);
        Warp.Barrier();
    }

    public void LdmatrixX4Trans(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        int lane = Warp.LaneIdx, w = Publish(scratch, address), r = w + 2 * (lane & 3), col = lane >> 2;
        r0 = Column(smem, scratch[r], scratch[r + 1], col);
        r1 = Column(smem, scratch[r + 8], scratch[r + 9], col);
        r2 = Column(smem, scratch[r + 16], scratch[r + 17], col);
        r3 = Column(smem, scratch[r + 24], scratch[r + 25], col);
        Warp.Barrier();
    }

    // Every lane's row address into the warp's scratch; returns the warp's first scratch word.
    private static int Publish(ArrayView<uint> scratch, uint address)
    {
        int w = Warp.WarpIdx * ScratchWords;
        scratch[w + Warp.LaneIdx] = address;
        Warp.Barrier();
        return w;
    }

    // Elements col and col + 1 of the 16-byte row at byte offset row, as one word (SharedBase() is 0 here).
    private static uint Word(ArrayView<ushort> smem, uint row, int col)
    {
        int i = (int)(row >> 1) + col;
        return smem[i] | ((uint)smem[i + 1] << 16);
    }

    // Element col of the rows at offsets row0 (low half) and row1 (high half).
    private static uint Column(ArrayView<ushort> smem, uint row0, uint row1, int col) =>
        smem[(int)(row0 >> 1) + col] | ((uint)smem[(int)(row1 >> 1) + col] << 16);
}

// Tensor-core fragments of mma.sync.m16n8k16 (bf16 in, f32 accumulate) and ldmatrix, in the layouts of the PTX ISA:
// lane = 4g + t; A (16x16, row major) a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// B (16x8, k by n) b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; C (16x8 f32) c0, c1 = C[g][2t], C[g][2t+1], c2, c3 = row g+8.
// Each pair of bf16 sits in one 32-bit word, the lower index in the low half. On CUDA each helper is one inline-PTX
// instruction; elsewhere (ILGPU's CPU accelerator) the same layouts are emulated: the lanes exchange fragments and row
// addresses through a per-warp scratch at the end of the kernel's dynamic shared memory (ScratchBytes, which a
// launcher adds off CUDA only) between warp barriers, a hundred times faster there than warp shuffles. Kernels built on them run unchanged. Exercised by the MatMul and Attention cases of
// tests/GpuOpsTests.cs.
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

public static class TensorCore
{
    private const int ScratchWords = 6 * 32;   // per warp: the A (4) and B (2) words of every lane
    private const int MaxWarps = 8;

    /// <summary>The .shared address of the kernel's dynamic shared memory (0 off CUDA, where byte offsets index the view).</summary>
    /// <remarks>ILGPU names every dynamic shared allocation of a kernel __dyn_shared_alloca (its PTX code generator);
    /// ldmatrix takes 32-bit shared addresses (DESIGN R5: 64-bit ones cost registers and stack).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint SharedBase()
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("mov.u32 %0, __dyn_shared_alloca;", out uint address);
            return address;
        }
        return 0;
    }

    /// <summary>Dynamic shared memory the emulation needs after a kernel's own (none on CUDA, where the instructions run).</summary>
    public static int ScratchBytes(bool emulated) => emulated ? MaxWarps * ScratchWords * 4 : 0;

    /// <summary>The emulation's exchange space for up to 8 warps: the dynamic shared memory from byte offset `offset` on.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ArrayView<uint> Scratch(ArrayView<ushort> dynamicShared, int offset)
    {
        if (CudaAsm.IsSupported) return default;
        return dynamicShared.SubView(offset / 2, MaxWarps * ScratchWords * 2).Cast<uint>();
    }

    /// <summary>c += A * B for one 16x8x16 step; b0, b1 are the B fragment; scratch is the kernel's Scratch view.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Mma(ref Acc c, in FragA a, uint b0, uint b1, ArrayView<uint> scratch)
    {
        if (CudaAsm.IsSupported)
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
            return;
        }
        c = MmaEmulated(c, a, b0, b1, scratch);
    }

    // The emulations are not inlined: on CUDA their calls sit in dead branches, so a kernel's PTX (and the driver's
    // compile time) stays that of the inline-PTX path. They take and return values: an address passed to a call, even
    // a dead one, would keep ptxas from holding the fragments in registers.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Acc MmaEmulated(Acc c, FragA a, uint b0, uint b1, ArrayView<uint> scratch)
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
        return c;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot2(uint x, uint y) => Bf16.Lo(x) * Bf16.Lo(y) + Bf16.Hi(x) * Bf16.Hi(y);

    /// <summary>
    /// ldmatrix.x4: four 8x8 b16 matrices from shared memory. Lane l supplies the address (SharedBase() plus the byte
    /// offset in the dynamic shared memory smem) of row l % 8 of matrix l / 8; rj receives matrix j's row l / 4,
    /// elements 2(l % 4) and 2(l % 4) + 1. Rows are 16 bytes, 16-byte aligned.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LdmatrixX4(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> o0 = default, o1 = default, o2 = default, o3 = default;
            Input<uint> a = address;
            CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];", ref o0, ref o1, ref o2, ref o3, ref a);
            r0 = o0.Value;
            r1 = o1.Value;
            r2 = o2.Value;
            r3 = o3.Value;
            return;
        }
        var r = LdmatrixX4Emulated(smem, (int)address, scratch);   // off CUDA SharedBase() is 0: the address is the offset
        (r0, r1, r2, r3) = (r.X, r.Y, r.Z, r.W);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static U4 LdmatrixX4Emulated(ArrayView<ushort> smem, int rowOffset, ArrayView<uint> scratch)
    {
        int lane = Warp.LaneIdx, w = Publish(scratch, rowOffset), col = 2 * (lane & 3), row = w + (lane >> 2);
        var r = new U4
        {
            X = Word(smem, (int)scratch[row], col),
            Y = Word(smem, (int)scratch[row + 8], col),
            Z = Word(smem, (int)scratch[row + 16], col),
            W = Word(smem, (int)scratch[row + 24], col),
        };
        Warp.Barrier();
        return r;
    }

    /// <summary>
    /// ldmatrix.x4.trans: as LdmatrixX4, but each matrix is transposed: rj receives elements (2(l % 4), l / 4) and
    /// (2(l % 4) + 1, l / 4) of matrix j (row, column), i.e. a B fragment of a row-major [k][n] tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LdmatrixX4Trans(ArrayView<ushort> smem, uint address, ArrayView<uint> scratch, out uint r0, out uint r1, out uint r2, out uint r3)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> o0 = default, o1 = default, o2 = default, o3 = default;
            Input<uint> a = address;
            CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];", ref o0, ref o1, ref o2, ref o3, ref a);
            r0 = o0.Value;
            r1 = o1.Value;
            r2 = o2.Value;
            r3 = o3.Value;
            return;
        }
        var t = LdmatrixX4TransEmulated(smem, (int)address, scratch);
        (r0, r1, r2, r3) = (t.X, t.Y, t.Z, t.W);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static U4 LdmatrixX4TransEmulated(ArrayView<ushort> smem, int rowOffset, ArrayView<uint> scratch)
    {
        int lane = Warp.LaneIdx, w = Publish(scratch, rowOffset), r = w + 2 * (lane & 3), col = lane >> 2;
        var t = new U4
        {
            X = Column(smem, (int)scratch[r], (int)scratch[r + 1], col),
            Y = Column(smem, (int)scratch[r + 8], (int)scratch[r + 9], col),
            Z = Column(smem, (int)scratch[r + 16], (int)scratch[r + 17], col),
            W = Column(smem, (int)scratch[r + 24], (int)scratch[r + 25], col),
        };
        Warp.Barrier();
        return t;
    }

    // Every lane's row offset into the warp's scratch; returns the warp's first scratch word.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Publish(ArrayView<uint> scratch, int rowOffset)
    {
        int w = Warp.WarpIdx * ScratchWords;
        scratch[w + Warp.LaneIdx] = (uint)rowOffset;
        Warp.Barrier();
        return w;
    }

    // Elements col and col + 1 of the 16-byte row at byte offset rowOffset, as one word.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Word(ArrayView<ushort> smem, int rowOffset, int col)
    {
        int i = (rowOffset >> 1) + col;
        return smem[i] | ((uint)smem[i + 1] << 16);
    }

    // Element col of the rows at offsets row0 (low half) and row1 (high half).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Column(ArrayView<ushort> smem, int row0, int row1, int col) =>
        smem[(row0 >> 1) + col] | ((uint)smem[(row1 >> 1) + col] << 16);
}

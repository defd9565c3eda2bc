// Causal flash attention for prefill (CpuOps.Attention) on tensor cores, bf16 KV cache: a group of W warps takes 16 W
// queries of one head, each warp 16 query rows. Per 64-key tile (Tile): S = Q K^T by mma.sync (Q as bf16), the causal
// mask only on tiles that cross a warp's diagonal, an online softmax in the exp2 domain (the scale log2(e)/sqrt(headDim)
// applied in the exponent's multiply-add), O += P V with P taken from the S registers as bf16. f32 accumulation
// throughout. K and V tiles are prefetched into registers (16-byte loads, half a tile at a time, each thread's offsets
// computed once: TileCopy) and stored to shared memory after the work they overlap: V(j) during S(j), K(j+1) during
// P V(j). (Not cp.async: with it in a kernel, ptxas keeps every inline-PTX operand of ILGPU's in local memory, 7 KB a
// thread here.) Warps whose rows all precede a tile skip it. The tiles below the group's first query, which every warp
// takes unmasked, run in a loop of their own (Tile with full: true), free of the branches whose joins cost register
// copies. Grid (ceil(T / 16W), numHeads), 32 W threads; dynamic shared memory holds the queries (as bf16, read by
// ldmatrix) and the K and V tiles, rows padded by 8 bf16. The fragments live in structs of named fields (Tiles8,
// Stage4), every loop over them written out: ILGPU does not unroll loops, and an array indexed in a loop would live in
// local memory. An index remap runs two compile-time variants: the far pass (far queries against the grouped keys,
// keys at distance >= window, causal shifted by window) stores each row's max, sum and unnormalized output; the near
// pass (keys within the window) merges them into its own before it divides. Exercised by the flash cases of
// tests/GpuOpsTests.cs (ILGPU's CPU accelerator runs the emulated fragments).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>Compile-time shape of a flash-attention variant: head dim (64 or 128) and warps per group.</summary>
public interface IFlashShape
{
    int HeadDim { get; }
    int Warps { get; }
}

public readonly struct FlashHd64 : IFlashShape
{
    public int HeadDim => 64;
    public int Warps => 4;
}

public readonly struct FlashHd128 : IFlashShape
{
    public int HeadDim => 128;
    public int Warps => 4;
}

/// <summary>128 queries a group (8 warps): half the cache reads per query, one group per SM.</summary>
public readonly struct FlashHd64Q128 : IFlashShape
{
    public int HeadDim => 64;
    public int Warps => 8;
}

public readonly struct FlashHd128Q128 : IFlashShape
{
    public int HeadDim => 128;
    public int Warps => 8;
}

/// <summary>Compile-time pass of a flash-attention variant: plain causal, or an index remap's far or near pass.</summary>
public interface IFlashPass
{
    int Pass { get; }
}

public readonly struct PlainPass : IFlashPass
{
    public int Pass => AttentionFlashKernels.Plain;
}

public readonly struct FarPass : IFlashPass
{
    public int Pass => AttentionFlashKernels.FarPass;
}

public readonly struct NearPass : IFlashPass
{
    public int Pass => AttentionFlashKernels.NearPass;
}

/// <summary>Eight 16x8 accumulator tiles side by side: 64 score columns (keys) or 64 output columns (dims).</summary>
public struct Tiles8
{
    public Acc T0, T1, T2, T3, T4, T5, T6, T7;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scale(float top, float bottom)
    {
        T0.Scale(top, bottom);
        T1.Scale(top, bottom);
        T2.Scale(top, bottom);
        T3.Scale(top, bottom);
        T4.Scale(top, bottom);
        T5.Scale(top, bottom);
        T6.Scale(top, bottom);
        T7.Scale(top, bottom);
    }
}

/// <summary>The warp's query rows as A fragments over dims 16 kk .. 16 kk + 15, kk = 0..7 (0..3 for head dim 64), loaded once.</summary>
public struct QueryFrags
{
    public FragA K0, K1, K2, K3, K4, K5, K6, K7;
}

/// <summary>A thread's share of copying a K or V tile: its first row, its first chunk's 16-byte index in the cache
/// (key 0) and in the tile, and the cache's step from one pass of rows to the next.</summary>
public struct TileCopy
{
    public int Row, Global, GlobalPass, Shared;
}

/// <summary>Up to four 16-byte chunks (half a thread's share) of a K or V tile, held in registers between their load and their store to shared memory.</summary>
public struct Stage4
{
    public U4 R0, R1, R2, R3;
}

public static class AttentionFlashKernels
{
    public const int TileKeys = 64, MinTokens = 32;

    /// <summary>IFlashPass.Pass: plain causal attention, or the far or near pass of an index remap.</summary>
    public const int Plain = 0, FarPass = 1, NearPass = 2;

    /// <summary>Dynamic shared memory of one group, in bf16 elements: the group's queries, a K and a V tile, rows padded by 8
    /// (plus EmulatedTensorCores.ScratchBytes where the fragments are emulated).</summary>
    public static int SharedElements(int headDim, int warps) => (16 * warps + 2 * TileKeys) * (headDim + 8);

    // A 64-key tile of K or V rows [k0, k0 + 64) moves as 16-byte chunks, in two halves; with hd / 8 chunks a row,
    // thread tid takes column 8 (tid % (hd / 8)) of rows tid / (hd / 8) + i * threads / (hd / 8) for i < 8 hd / threads,
    // half h the i of [h n / 2, (h + 1) n / 2). Rows at or past kend read as zeros. The thread's offsets are computed
    // once (TileCopy): recomputed a chunk, their 64-bit index arithmetic was a third of the loop's instructions.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TileCopy CopyPlan(int col4, int kvDim4, int hd, int threads)
    {
        int shift = hd == 128 ? 4 : 3, perRow = hd / 8;   // hd / 8 chunks a row
        int row = Group.IdxX >> shift, col = Group.IdxX & (perRow - 1), rowsPerPass = threads / perRow;
        return new TileCopy
        {
            Row = row,
            Global = row * kvDim4 + col4 + col,
            GlobalPass = rowsPerPass * kvDim4,
            Shared = row * ((hd + 8) / 8) + col,
        };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static U4 LoadChunk(ArrayView<U4> src4, in TileCopy c, int i, int rowsPerPass, int tile, int rowsLeft) =>
        c.Row + i * rowsPerPass < rowsLeft ? src4[tile + c.Global + i * c.GlobalPass] : default;

    // Half h of this thread's chunks of the tile at k0, global to registers.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(ref Stage4 st, int h, ArrayView<U4> src4, in TileCopy c, int k0, int kend, int kvDim4, int hd, int threads)
    {
        int perRow = hd / 8, half = TileKeys * perRow / threads / 2, rowsPerPass = threads / perRow, i0 = h * half;
        int tile = k0 * kvDim4, left = kend - k0;
        st.R0 = LoadChunk(src4, c, i0, rowsPerPass, tile, left);
        if (half > 1) st.R1 = LoadChunk(src4, c, i0 + 1, rowsPerPass, tile, left);
        if (half > 2)
        {
            st.R2 = LoadChunk(src4, c, i0 + 2, rowsPerPass, tile, left);
            st.R3 = LoadChunk(src4, c, i0 + 3, rowsPerPass, tile, left);
        }
    }

    // Half h of the prefetched chunks, registers to the tile at 16-byte index tile4 of shared memory (rows of hd + 8 bf16).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreStage(in Stage4 st, int h, ArrayView<U4> smem4, in TileCopy c, int tile4, int hd, int threads)
    {
        int perRow = hd / 8, half = TileKeys * perRow / threads / 2, pass4 = threads / perRow * ((hd + 8) / 8);
        int first = tile4 + c.Shared + h * half * pass4;
        smem4[first] = st.R0;
        if (half > 1) smem4[first + pass4] = st.R1;
        if (half > 2)
        {
            smem4[first + 2 * pass4] = st.R2;
            smem4[first + 3 * pass4] = st.R3;
        }
    }

    // The group's query rows m0 .. m0 + bm - 1 (clamped to T - 1) of head h as bf16 into shared memory at qsOffset.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreQueries(ArrayView<float> q, ArrayView<uint> smem32, int qsOffset, int m0, int bm, int T, int qStride, int h, int hd, int threads)
    {
        for (int i = Group.IdxX; i < bm * hd / 2; i += threads)
        {
            int r = i / (hd / 2), c = i % (hd / 2) * 2;
            long src = (long)XMath.Min(m0 + r, T - 1) * qStride + h * hd + c;
            smem32[(qsOffset + 2 * (r * (hd + 8) + c)) / 4] = Bf16.Pack(q[src], q[src + 1]);
        }
    }

    // The A fragment of the warp's 16 query rows over dims 16 kk .. 16 kk + 15, by one ldmatrix.x4; qLane is this
    // lane's row address for kk = 0 (row warp * 16 + lane % 16, column 8 (lane / 16)).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static FragA QueryFragment<TC>(ArrayView<ushort> smem, ArrayView<uint> scratch, uint qLane, int kk) where TC : struct, ITensorCores
    {
        default(TC).LdmatrixX4(smem, qLane + (uint)(32 * kk), scratch, out uint a0, out uint a1, out uint a2, out uint a3);
        return new FragA { A0 = a0, A1 = a1, A2 = a2, A3 = a3 };
    }

    // S tiles nt, nt + 1 (keys 8 nt .. 8 nt + 15) += Q(dims 16 kk ..) K^T, the K fragments by one ldmatrix.x4; kLane is
    // this lane's row address for nt = kk = 0 (key lane % 8 + 8 (lane / 16), column 8 ((lane / 8) % 2)).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScorePair<TC>(ref Acc s0, ref Acc s1, in FragA a, ArrayView<ushort> smem, ArrayView<uint> scratch, uint kLane, int row, int nt, int kk) where TC : struct, ITensorCores
    {
        default(TC).LdmatrixX4(smem, kLane + (uint)(16 * nt * row + 32 * kk), scratch, out uint b0, out uint b1, out uint b2, out uint b3);
        default(TC).Mma(ref s0, a, b0, b1, scratch);
        default(TC).Mma(ref s1, a, b2, b3, scratch);
    }

    // All 64 keys of the tile against the warp's queries over dims 16 kk .. 16 kk + 15: held (the fragment kept in
    // registers) or loaded from the queries in shared memory (qLane) now.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores<TC>(ref Tiles8 s, in FragA held, bool isHeld, ArrayView<ushort> smem, ArrayView<uint> scratch, uint qLane, uint kLane, int row, int kk)
        where TC : struct, ITensorCores
    {
        var a = isHeld ? held : QueryFragment<TC>(smem, scratch, qLane, kk);
        ScorePair<TC>(ref s.T0, ref s.T1, a, smem, scratch, kLane, row, 0, kk);
        ScorePair<TC>(ref s.T2, ref s.T3, a, smem, scratch, kLane, row, 2, kk);
        ScorePair<TC>(ref s.T4, ref s.T5, a, smem, scratch, kLane, row, 4, kk);
        ScorePair<TC>(ref s.T6, ref s.T7, a, smem, scratch, kLane, row, 6, kk);
    }

    // O tiles nt, nt + 1 (dims 8 nt .. 8 nt + 15) += P(keys 16 kk ..) V, the V fragments by one ldmatrix.x4.trans; vLane
    // is this lane's row address for nt = kk = 0 (key lane % 16, column 8 (lane / 16)).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void OutputPair<TC>(ref Acc o0, ref Acc o1, in FragA p, ArrayView<ushort> smem, ArrayView<uint> scratch, uint vLane, int row, int nt, int kk) where TC : struct, ITensorCores
    {
        default(TC).LdmatrixX4Trans(smem, vLane + (uint)(32 * kk * row + 16 * nt), scratch, out uint b0, out uint b1, out uint b2, out uint b3);
        default(TC).Mma(ref o0, p, b0, b1, scratch);
        default(TC).Mma(ref o1, p, b2, b3, scratch);
    }

    // O (dims 0..63 in lo, 64..127 in hi when hd is 128) += P(keys 16 kk .. 16 kk + 15) V.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Outputs<TC>(ref Tiles8 lo, ref Tiles8 hi, in FragA p, ArrayView<ushort> smem, ArrayView<uint> scratch, uint vLane, int row, int kk, int hd) where TC : struct, ITensorCores
    {
        OutputPair<TC>(ref lo.T0, ref lo.T1, p, smem, scratch, vLane, row, 0, kk);
        OutputPair<TC>(ref lo.T2, ref lo.T3, p, smem, scratch, vLane, row, 2, kk);
        OutputPair<TC>(ref lo.T4, ref lo.T5, p, smem, scratch, vLane, row, 4, kk);
        OutputPair<TC>(ref lo.T6, ref lo.T7, p, smem, scratch, vLane, row, 6, kk);
        if (hd == 128)
        {
            OutputPair<TC>(ref hi.T0, ref hi.T1, p, smem, scratch, vLane, row, 8, kk);
            OutputPair<TC>(ref hi.T2, ref hi.T3, p, smem, scratch, vLane, row, 10, kk);
            OutputPair<TC>(ref hi.T4, ref hi.T5, p, smem, scratch, vLane, row, 12, kk);
            OutputPair<TC>(ref hi.T6, ref hi.T7, p, smem, scratch, vLane, row, 14, kk);
        }
    }

    // The causal mask of one score tile whose first key (of this lane's columns) is key.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Mask(ref Acc s, int key, int qpos0, int qpos1)
    {
        if (key > qpos0) s.C0 = float.NegativeInfinity;
        if (key + 1 > qpos0) s.C1 = float.NegativeInfinity;
        if (key > qpos1) s.C2 = float.NegativeInfinity;
        if (key + 1 > qpos1) s.C3 = float.NegativeInfinity;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaskTile(ref Tiles8 s, int key, int qpos0, int qpos1)
    {
        Mask(ref s.T0, key, qpos0, qpos1);
        Mask(ref s.T1, key + 8, qpos0, qpos1);
        Mask(ref s.T2, key + 16, qpos0, qpos1);
        Mask(ref s.T3, key + 24, qpos0, qpos1);
        Mask(ref s.T4, key + 32, qpos0, qpos1);
        Mask(ref s.T5, key + 40, qpos0, qpos1);
        Mask(ref s.T6, key + 48, qpos0, qpos1);
        Mask(ref s.T7, key + 56, qpos0, qpos1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowMax(in Acc s, ref float m0, ref float m1)
    {
        m0 = XMath.Max(m0, XMath.Max(s.C0, s.C1));
        m1 = XMath.Max(m1, XMath.Max(s.C2, s.C3));
    }

    // s = 2^(s scale - row max), and the row sums of the new weights.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Exp2(ref Acc s, float scale, float m0, float m1, ref float sum0, ref float sum1)
    {
        s.C0 = FastMath.Exp2(s.C0 * scale - m0);
        s.C1 = FastMath.Exp2(s.C1 * scale - m0);
        s.C2 = FastMath.Exp2(s.C2 * scale - m1);
        s.C3 = FastMath.Exp2(s.C3 * scale - m1);
        sum0 += s.C0 + s.C1;
        sum1 += s.C2 + s.C3;
    }

    // Two adjacent score tiles (16 keys) as the bf16 A fragment of P.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static FragA Probabilities(in Acc left, in Acc right) => new()
    {
        A0 = Bf16.Pack(left.C0, left.C1),
        A1 = Bf16.Pack(left.C2, left.C3),
        A2 = Bf16.Pack(right.C0, right.C1),
        A3 = Bf16.Pack(right.C2, right.C3),
    };

    // Output tile nt of rows r0 / r1 (when inside T), divided by the softmax sums.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> dst, in Acc o, int nt, int r0, int r1, int T, int qStride, int h, int hd, int tig, float l0, float l1)
    {
        long col = h * hd + nt * 8 + tig * 2;
        if (r0 < T)
        {
            dst[(long)r0 * qStride + col] = o.C0 / l0;
            dst[(long)r0 * qStride + col + 1] = o.C1 / l0;
        }
        if (r1 < T)
        {
            dst[(long)r1 * qStride + col] = o.C2 / l1;
            dst[(long)r1 * qStride + col + 1] = o.C3 / l1;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTiles(ArrayView<float> dst, in Tiles8 o, int nt0, int r0, int r1, int T, int qStride, int h, int hd, int tig, float l0, float l1)
    {
        Store(dst, o.T0, nt0, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T1, nt0 + 1, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T2, nt0 + 2, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T3, nt0 + 3, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T4, nt0 + 4, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T5, nt0 + 5, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T6, nt0 + 6, r0, r1, T, qStride, h, hd, tig, l0, l1);
        Store(dst, o.T7, nt0 + 7, r0, r1, T, qStride, h, hd, tig, l0, l1);
    }

    // Keys at or below bound0 (row r0) / bound1 (row r1) masked: a remap's near pass sees only keys p > i - window.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaskBelow(ref Acc s, int key, int bound0, int bound1)
    {
        if (key <= bound0) s.C0 = float.NegativeInfinity;
        if (key + 1 <= bound0) s.C1 = float.NegativeInfinity;
        if (key <= bound1) s.C2 = float.NegativeInfinity;
        if (key + 1 <= bound1) s.C3 = float.NegativeInfinity;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaskWindow(ref Tiles8 s, int key, int bound0, int bound1)
    {
        MaskBelow(ref s.T0, key, bound0, bound1);
        MaskBelow(ref s.T1, key + 8, bound0, bound1);
        MaskBelow(ref s.T2, key + 16, bound0, bound1);
        MaskBelow(ref s.T3, key + 24, bound0, bound1);
        MaskBelow(ref s.T4, key + 32, bound0, bound1);
        MaskBelow(ref s.T5, key + 40, bound0, bound1);
        MaskBelow(ref s.T6, key + 48, bound0, bound1);
        MaskBelow(ref s.T7, key + 56, bound0, bound1);
    }

    // Row r's slot of a far pass: [max (exp2 domain), sum, headDim unnormalized outputs].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long RowSlot(int r, int numHeads, int h, int hd) => ((long)r * numHeads + h) * (hd + 2);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRowStats(ArrayView<float> partial, int r, int numHeads, int h, int hd, float m, float l)
    {
        long b = RowSlot(r, numHeads, h, hd);
        partial[b] = m;
        partial[b + 1] = l;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StorePartial(ArrayView<float> partial, in Acc o, int nt, int r0, int r1, int T, int numHeads, int h, int hd, int tig)
    {
        int col = 2 + nt * 8 + tig * 2;
        if (r0 < T)
        {
            partial[RowSlot(r0, numHeads, h, hd) + col] = o.C0;
            partial[RowSlot(r0, numHeads, h, hd) + col + 1] = o.C1;
        }
        if (r1 < T)
        {
            partial[RowSlot(r1, numHeads, h, hd) + col] = o.C2;
            partial[RowSlot(r1, numHeads, h, hd) + col + 1] = o.C3;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StorePartialTiles(ArrayView<float> partial, in Tiles8 o, int nt0, int r0, int r1, int T, int numHeads, int h, int hd, int tig)
    {
        StorePartial(partial, o.T0, nt0, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T1, nt0 + 1, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T2, nt0 + 2, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T3, nt0 + 3, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T4, nt0 + 4, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T5, nt0 + 5, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T6, nt0 + 6, r0, r1, T, numHeads, h, hd, tig);
        StorePartial(partial, o.T7, nt0 + 7, r0, r1, T, numHeads, h, hd, tig);
    }

    /// <summary>How a near-pass row and its far-pass row merge: out = (o Near + acc Far) / Sum.</summary>
    public struct RowMerge
    {
        public float Near, Far, Sum;
    }

    // The near pass's row state (m, l; exp2 domain) against the far pass's stored row r: the larger max M, the weights
    // 2^(m - M) of each pass (0 for a far row without keys) and the combined sum.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static RowMerge MergeWeights(ArrayView<float> partial, int r, int numHeads, int h, int hd, float m, float l)
    {
        long b = RowSlot(r, numHeads, h, hd);
        float mf = partial[b], lf = partial[b + 1];
        float mAll = XMath.Max(m, mf);
        float near = FastMath.Exp2(m - mAll), far = lf == 0f ? 0f : FastMath.Exp2(mf - mAll);
        return new RowMerge { Near = near, Far = far, Sum = l * near + lf * far };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreMerged(ArrayView<float> dst, ArrayView<float> partial, in Acc o, int nt, int r0, int r1, int T, int numHeads, int h, int hd,
        int tig, in RowMerge w0, in RowMerge w1)
    {
        int c = nt * 8 + tig * 2;
        long col = h * hd + c, qStride = (long)numHeads * hd;
        if (r0 < T)
        {
            long b = RowSlot(r0, numHeads, h, hd) + 2 + c;
            dst[r0 * qStride + col] = (o.C0 * w0.Near + partial[b] * w0.Far) / w0.Sum;
            dst[r0 * qStride + col + 1] = (o.C1 * w0.Near + partial[b + 1] * w0.Far) / w0.Sum;
        }
        if (r1 < T)
        {
            long b = RowSlot(r1, numHeads, h, hd) + 2 + c;
            dst[r1 * qStride + col] = (o.C2 * w1.Near + partial[b] * w1.Far) / w1.Sum;
            dst[r1 * qStride + col + 1] = (o.C3 * w1.Near + partial[b + 1] * w1.Far) / w1.Sum;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreMergedTiles(ArrayView<float> dst, ArrayView<float> partial, in Tiles8 o, int nt0, int r0, int r1, int T, int numHeads, int h,
        int hd, int tig, in RowMerge w0, in RowMerge w1)
    {
        StoreMerged(dst, partial, o.T0, nt0, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T1, nt0 + 1, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T2, nt0 + 2, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T3, nt0 + 3, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T4, nt0 + 4, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T5, nt0 + 5, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T6, nt0 + 6, r0, r1, T, numHeads, h, hd, tig, w0, w1);
        StoreMerged(dst, partial, o.T7, nt0 + 7, r0, r1, T, numHeads, h, hd, tig, w0, w1);
    }

    /// <summary>A warp's running state over the key tiles: output accumulators, row max (exp2 domain) and sum of each of its lane's two rows, the scores of the current tile and the prefetched chunks.</summary>
    public struct FlashRows
    {
        public Tiles8 OLo, OHi, S;
        public Stage4 St;
        public float M0, M1, L0, L1;
    }

    /// <summary>What every tile of a group uses: shared and cache views, lane addresses, copy plan and bounds.</summary>
    public struct FlashTile
    {
        public ArrayView<ushort> Smem;
        public ArrayView<U4> Smem4, KCache, VCache;
        public ArrayView<uint> Scratch;
        public TileCopy Copy;
        public uint QLane, KLane, VLane;
        public int Row, Ks4, Vs4, KvDim4, Kend, WarpFirst, QPos0, QPos1, Window, KeyLane;
        public float ScaleLog2;
    }

    // One 64-key tile at k0: S = Q K^T, the online softmax, O += P V, with V(j) and K(j+1) in flight meanwhile. full (a
    // compile-time constant at each call): every warp takes the tile, no key is masked and a next tile follows.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TS, TC, TP>(ref FlashRows f, in FlashTile t, in QueryFrags qf, int k0, bool full)
        where TS : struct, IFlashShape
        where TC : struct, ITensorCores
        where TP : struct, IFlashPass
    {
        int mode = default(TP).Pass;
        int hd = default(TS).HeadDim, threads = 32 * default(TS).Warps, row = t.Row;
        var smem = t.Smem;
        var scratch = t.Scratch;
        Group.Barrier();   // K(j) visible; every warp is done with V(j-1)
        // V(j) arrives in two halves, each in flight while half of S(j) is computed (the V tile is free: every warp
        // passed the barrier after its P V(j-1)).
        Prefetch(ref f.St, 0, t.VCache, t.Copy, k0, t.Kend, t.KvDim4, hd, threads);
        bool active = full || (k0 <= t.WarpFirst + 15 && (mode != NearPass || k0 + TileKeys - 1 > t.WarpFirst - t.Window));
        if (active)
        {
            f.S = default;
            Scores<TC>(ref f.S, qf.K0, hd == 128, smem, scratch, t.QLane, t.KLane, row, 0);
            Scores<TC>(ref f.S, qf.K1, hd == 128, smem, scratch, t.QLane, t.KLane, row, 1);
            if (hd == 128)
            {
                Scores<TC>(ref f.S, qf.K2, hd == 128, smem, scratch, t.QLane, t.KLane, row, 2);
                Scores<TC>(ref f.S, qf.K3, hd == 128, smem, scratch, t.QLane, t.KLane, row, 3);
            }
        }
        StoreStage(f.St, 0, t.Smem4, t.Copy, t.Vs4, hd, threads);
        Prefetch(ref f.St, 1, t.VCache, t.Copy, k0, t.Kend, t.KvDim4, hd, threads);
        if (active)
        {
            if (hd == 128)
            {
                Scores<TC>(ref f.S, qf.K4, hd == 128, smem, scratch, t.QLane, t.KLane, row, 4);
                Scores<TC>(ref f.S, qf.K5, hd == 128, smem, scratch, t.QLane, t.KLane, row, 5);
                Scores<TC>(ref f.S, qf.K6, hd == 128, smem, scratch, t.QLane, t.KLane, row, 6);
                Scores<TC>(ref f.S, qf.K7, hd == 128, smem, scratch, t.QLane, t.KLane, row, 7);
            }
            else
            {
                Scores<TC>(ref f.S, qf.K2, hd == 128, smem, scratch, t.QLane, t.KLane, row, 2);
                Scores<TC>(ref f.S, qf.K3, hd == 128, smem, scratch, t.QLane, t.KLane, row, 3);
            }
            if (!full && k0 + TileKeys - 1 > t.WarpFirst) MaskTile(ref f.S, k0 + t.KeyLane, t.QPos0, t.QPos1);
            if (mode == NearPass && k0 <= t.WarpFirst + 15 - t.Window) MaskWindow(ref f.S, k0 + t.KeyLane, t.QPos0 - t.Window, t.QPos1 - t.Window);
            Softmax(ref f, t.ScaleLog2, mode, hd);
        }
        StoreStage(f.St, 1, t.Smem4, t.Copy, t.Vs4, hd, threads);
        // K(j+1) likewise during P V(j), into the K tile every warp is done with after the barrier.
        bool more = full || k0 + TileKeys < t.Kend;
        if (more) Prefetch(ref f.St, 0, t.KCache, t.Copy, k0 + TileKeys, t.Kend, t.KvDim4, hd, threads);
        Group.Barrier();   // V(j) visible; every warp is done with K(j)
        if (active)
        {
            Outputs<TC>(ref f.OLo, ref f.OHi, Probabilities(f.S.T0, f.S.T1), smem, scratch, t.VLane, row, 0, hd);
            Outputs<TC>(ref f.OLo, ref f.OHi, Probabilities(f.S.T2, f.S.T3), smem, scratch, t.VLane, row, 1, hd);
        }
        if (more)
        {
            StoreStage(f.St, 0, t.Smem4, t.Copy, t.Ks4, hd, threads);
            Prefetch(ref f.St, 1, t.KCache, t.Copy, k0 + TileKeys, t.Kend, t.KvDim4, hd, threads);
        }
        if (active)
        {
            Outputs<TC>(ref f.OLo, ref f.OHi, Probabilities(f.S.T4, f.S.T5), smem, scratch, t.VLane, row, 2, hd);
            Outputs<TC>(ref f.OLo, ref f.OHi, Probabilities(f.S.T6, f.S.T7), smem, scratch, t.VLane, row, 3, hd);
        }
        if (more) StoreStage(f.St, 1, t.Smem4, t.Copy, t.Ks4, hd, threads);   // the next barrier publishes K(j+1)
    }

    // The online softmax of the tile's scores (raw Q K^T): the new row max in the exp2 domain, the weights
    // 2^(s scale - max) (one fused multiply-add each), the rescaled sums and outputs.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Softmax(ref FlashRows f, float scale, int mode, int hd)
    {
        float mx0 = float.NegativeInfinity, mx1 = float.NegativeInfinity;
        RowMax(f.S.T0, ref mx0, ref mx1);
        RowMax(f.S.T1, ref mx0, ref mx1);
        RowMax(f.S.T2, ref mx0, ref mx1);
        RowMax(f.S.T3, ref mx0, ref mx1);
        RowMax(f.S.T4, ref mx0, ref mx1);
        RowMax(f.S.T5, ref mx0, ref mx1);
        RowMax(f.S.T6, ref mx0, ref mx1);
        RowMax(f.S.T7, ref mx0, ref mx1);
        // scale > 0, so the max of the scaled scores is the scaled max.
        mx0 = XMath.Max(f.M0, Reduce.QuadMax(mx0) * scale);
        mx1 = XMath.Max(f.M1, Reduce.QuadMax(mx1) * scale);
        float m0Prev = f.M0, m1Prev = f.M1;
        f.M0 = mx0;
        f.M1 = mx1;
        // A row with every key so far masked (only with a remap's window) keeps max -inf: subtract 0 instead.
        if (mode != Plain)
        {
            if (mx0 == float.NegativeInfinity) mx0 = 0f;
            if (mx1 == float.NegativeInfinity) mx1 = 0f;
        }
        float c0 = FastMath.Exp2(m0Prev - mx0), c1 = FastMath.Exp2(m1Prev - mx1);
        float sum0 = 0f, sum1 = 0f;
        Exp2(ref f.S.T0, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T1, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T2, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T3, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T4, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T5, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T6, scale, mx0, mx1, ref sum0, ref sum1);
        Exp2(ref f.S.T7, scale, mx0, mx1, ref sum0, ref sum1);
        f.L0 = f.L0 * c0 + Reduce.QuadSum(sum0);
        f.L1 = f.L1 * c1 + Reduce.QuadSum(sum1);
        f.OLo.Scale(c0, c1);
        if (hd == 128) f.OHi.Scale(c0, c1);
    }

    // kernels

    /// <summary>
    /// kcache, vcache: the layer's cache rows as 16-byte vectors (kvDim % 8 == 0). PlainPass: causal attention into dst
    /// (window and partial unused). An index remap runs two passes: FarPass (q the far queries, kcache the grouped keys)
    /// scores keys p &lt;= i - window and writes each row's (max, sum, unnormalized output) to partial [T, numHeads,
    /// headDim + 2]; NearPass scores keys p &gt; i - window and writes dst, merged with the far pass's rows.
    /// </summary>
    public static void Flash<TS, TC, TP>(ArrayView<float> q, ArrayView<U4> kcache, ArrayView<U4> vcache, ArrayView<float> dst,
        int T, int numHeads, int numKvHeads, int startPos, float scaleLog2, int window, ArrayView<float> partial)
        where TS : struct, IFlashShape
        where TC : struct, ITensorCores
        where TP : struct, IFlashPass
    {
        int mode = default(TP).Pass;   // a compile-time constant: the plain kernel has none of the remap code
        int hd = default(TS).HeadDim, bm = 16 * default(TS).Warps, threads = 32 * default(TS).Warps, row = hd + 8;
        var smem = SharedMemory.GetDynamic<ushort>();
        var smem4 = smem.Cast<U4>();   // the same memory, for 16-byte stores
        var smem32 = smem.Cast<uint>();
        uint smemBase = default(TC).SharedBase();
        var scratch = default(TC).Scratch(smem, 2 * SharedElements(hd, default(TS).Warps));
        int ksOffset = 0, vsOffset = 2 * TileKeys * row, qsOffset = 4 * TileKeys * row;   // byte offsets of the K, V and Q tiles
        int lane = Warp.LaneIdx, warp = Warp.WarpIdx, tig = lane & 3;
        int h = Grid.IdxY, m0 = (Grid.DimX - 1 - Grid.IdxX) * bm;   // heaviest (latest) query tiles first
        int kvh = h / (numHeads / numKvHeads), kvDim = numKvHeads * hd, qStride = numHeads * hd;
        int r0 = m0 + warp * 16 + (lane >> 2), r1 = r0 + 8;
        // This lane's ldmatrix row addresses (tile offsets plus the lane's row and column; 2 bytes an element).
        uint qLane = smemBase + (uint)(qsOffset + 2 * ((warp * 16 + (lane & 15)) * row + (lane >> 4) * 8));
        uint kLane = smemBase + (uint)(ksOffset + 2 * (((lane & 7) + ((lane >> 4) << 3)) * row + ((lane >> 3) & 1) * 8));
        uint vLane = smemBase + (uint)(vsOffset + 2 * ((lane & 15) * row + (lane >> 4) * 8));
        // The far pass scores query i against keys p <= i - window: causal at positions shifted down by window.
        int pos0 = mode == FarPass ? startPos - window : startPos;
        int kend = XMath.Max(0, pos0 + XMath.Min(m0 + bm - 1, T - 1) + 1);
        // The near pass starts at the first tile any of the group's queries sees (keys p > i - window).
        int kstart = mode == NearPass ? XMath.Max(0, startPos + m0 - window + 1) / TileKeys * TileKeys : 0;
        long headOffset = (long)kvh * hd;
        int kvDim4 = kvDim / 8, ks4 = ksOffset / 16, vs4 = vsOffset / 16;
        var copy = CopyPlan((int)(headOffset / 8), kvDim4, hd, threads);
        Stage4 st = default;
        Prefetch(ref st, 0, kcache, copy, kstart, kend, kvDim4, hd, threads);
        StoreStage(st, 0, smem4, copy, ks4, hd, threads);
        Prefetch(ref st, 1, kcache, copy, kstart, kend, kvDim4, hd, threads);
        StoreStage(st, 1, smem4, copy, ks4, hd, threads);

        StoreQueries(q, smem32, qsOffset, m0, bm, T, qStride, h, hd, threads);
        Group.Barrier();
        // Head dim 128: the warp's query fragments stay in registers for every tile (one ldmatrix each, not one a tile:
        // H200, 16k causal, 168 -> 176 TFLOP/s). Head dim 64 reloads them a tile (165 TFLOP/s, against 141 when kept).
        QueryFrags qf = default;
        if (hd == 128)
        {
            qf.K0 = QueryFragment<TC>(smem, scratch, qLane, 0);
            qf.K1 = QueryFragment<TC>(smem, scratch, qLane, 1);
            qf.K2 = QueryFragment<TC>(smem, scratch, qLane, 2);
            qf.K3 = QueryFragment<TC>(smem, scratch, qLane, 3);
            qf.K4 = QueryFragment<TC>(smem, scratch, qLane, 4);
            qf.K5 = QueryFragment<TC>(smem, scratch, qLane, 5);
            qf.K6 = QueryFragment<TC>(smem, scratch, qLane, 6);
            qf.K7 = QueryFragment<TC>(smem, scratch, qLane, 7);
        }
        var t = new FlashTile
        {
            Smem = smem, Smem4 = smem4, Scratch = scratch, KCache = kcache, VCache = vcache, Copy = copy,
            QLane = qLane, KLane = kLane, VLane = vLane, Row = row, Ks4 = ks4, Vs4 = vs4, KvDim4 = kvDim4, Kend = kend,
            WarpFirst = pos0 + m0 + warp * 16, QPos0 = pos0 + r0, QPos1 = pos0 + r1, Window = window, ScaleLog2 = scaleLog2,
            KeyLane = tig * 2,
        };
        var f = new FlashRows { M0 = float.NegativeInfinity, M1 = float.NegativeInfinity };
        // Tiles before the group's first query need no mask and every warp takes them (the causal passes): one copy
        // of the loop for those, without the branches and the copies of live registers at their joins, and one for the
        // rest. The near pass's window may mask any tile: it takes the general loop throughout.
        int k0 = kstart;
        if (mode != NearPass)
        {
            int fullEnd = XMath.Min(pos0 + m0 + 1, kend - 1);   // tiles wholly below it are full, and have a next tile
            for (; k0 + TileKeys <= fullEnd; k0 += TileKeys) Tile<TS, TC, TP>(ref f, t, qf, k0, full: true);
        }
        for (; k0 < kend; k0 += TileKeys) Tile<TS, TC, TP>(ref f, t, qf, k0, full: false);
        Tiles8 oLo = f.OLo, oHi = f.OHi;
        float mrow0 = f.M0, mrow1 = f.M1, lrow0 = f.L0, lrow1 = f.L1;
        if (mode == FarPass)
        {
            // (max, sum, unnormalized output) of each row for the near pass; rows without keys give (-inf, 0, 0).
            if (tig == 0)
            {
                if (r0 < T) StoreRowStats(partial, r0, numHeads, h, hd, mrow0, lrow0);
                if (r1 < T) StoreRowStats(partial, r1, numHeads, h, hd, mrow1, lrow1);
            }
            StorePartialTiles(partial, oLo, 0, r0, r1, T, numHeads, h, hd, tig);
            if (hd == 128) StorePartialTiles(partial, oHi, 8, r0, r1, T, numHeads, h, hd, tig);
            return;
        }
        if (mode == NearPass)
        {
            // One softmax over both passes: rescale each to the larger max and divide by the combined sum.
            var w0 = MergeWeights(partial, XMath.Min(r0, T - 1), numHeads, h, hd, mrow0, lrow0);
            var w1 = MergeWeights(partial, XMath.Min(r1, T - 1), numHeads, h, hd, mrow1, lrow1);
            StoreMergedTiles(dst, partial, oLo, 0, r0, r1, T, numHeads, h, hd, tig, w0, w1);
            if (hd == 128) StoreMergedTiles(dst, partial, oHi, 8, r0, r1, T, numHeads, h, hd, tig, w0, w1);
            return;
        }
        StoreTiles(dst, oLo, 0, r0, r1, T, qStride, h, hd, tig, lrow0, lrow1);
        if (hd == 128) StoreTiles(dst, oHi, 8, r0, r1, T, qStride, h, hd, tig, lrow0, lrow1);
    }
}

// Decode attention (CpuOps.Attention) over a bf16 cache, for few queries and long contexts: one group of W warps per
// (KV head, query, key split), W = Group.DimX / 32 (4, or more for a short context: GpuKernels.DecodeWarpsFor). A
// query's keys are shared out evenly among its splits (a decode step's grid is sized for its bucket's longest length,
// so no split idles). A key's row is read by P = headDim / 8 lanes, 16 bytes (8 dims) each (StreamedU4: the cache is
// read once), so a warp takes 32 / P keys a step. Every query head of the KV head's group (G of them, a compile-time
// 1, 2, 4 or 8) keeps its 8 query dims, its running max and sum and its 8 output dims in registers: one read of the
// cache serves all G heads (GQA). Scores are reduced over the P lanes by shuffles. With one query head a lane (TT:
// FourSteps) a warp loads four steps of keys at once and scores them before one online-softmax update; with more,
// whose states fill the registers, the loads of the next step are in flight while this one is computed and the
// softmax updates per key. H100, Llama-2-7B at depth 16384, tg128 @ d16384 (t/s): 124.15 / 125.46 with the splits
// sized for the bucket and one step at a time, 127.22 with the keys shared out over whole waves of groups (fewer
// idle SMs), 128.31 with four-step tiles as well; L2 prefetches of the keys 4 or 8 steps ahead lost (124.09, 121.62).
// On an H200 a warp's work per byte of cache is near what the SMs issue at full bandwidth, so the loop is kept short:
// the softmax scale multiplies each reduced score (not the held query dims, whose multiplies ILGPU placed inside the
// loop), the score's shuffles take no branch, and (FullFourSteps, LLAMA_ATTN_TILE=full) the tiles whose keys all lie
// inside the split load without guards from device addresses a lane steps along. Llama-2-7B's variant (one query head
// a lane, head dim 128) compiled for sm_90 by ptxas 11.8: 414 instructions a four-step tile (4 KB of K and V a warp)
// and 80 registers before, 392 and 72 after (7 groups of 4 warps an SM instead of 6); with full tiles 298 and 80, or
// 302 and 72 with the registers capped for 7 groups (LLAMA_ATTN_BLOCKS=7).
// The key slots of a warp, then the W warps, are merged at the end (shuffles, then shared memory), and the group
// writes dst (one split) or (m, l, acc) for AttentionKernels.Combine. With an index remap the first splits take the
// far keys (far queries against the grouped keys), the rest the window. Head dims 64, 128 or 256. Exercised by the
// decode cases of tests/GpuOpsTests.cs (4 and 8 warps, one and two query heads a lane, on the CPU accelerator).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>Query heads per KV head that a decode variant holds (the actual group may be smaller: the rest idle).</summary>
public interface IQueryGroup
{
    int Heads { get; }
}

public readonly struct OneQueryHead : IQueryGroup
{
    public int Heads => 1;
}

public readonly struct TwoQueryHeads : IQueryGroup
{
    public int Heads => 2;
}

public readonly struct FourQueryHeads : IQueryGroup
{
    public int Heads => 4;
}

public readonly struct EightQueryHeads : IQueryGroup
{
    public int Heads => 8;
}

/// <summary>
/// Key steps a warp loads at once before it scores them (a tile): 1, or 4 with one softmax rescale a tile. Full: the
/// tiles whose keys all lie inside the split load without guards, from device addresses a lane steps along, and only
/// the split's last tile takes them.
/// </summary>
public interface IKeyTile
{
    int Steps { get; }
    bool Full { get; }
}

public readonly struct OneStep : IKeyTile
{
    public int Steps => 1;
    public bool Full => false;
}

public readonly struct FourSteps : IKeyTile
{
    public int Steps => 4;
    public bool Full => false;
}

/// <summary>Four-step tiles, the full ones without guards (IKeyTile.Full).</summary>
public readonly struct FullFourSteps : IKeyTile
{
    public int Steps => 4;
    public bool Full => true;
}

/// <summary>One query head's state in one lane: 8 query dims, the running max and sum, 8 output dims.</summary>
public struct HeadState
{
    public float Q0, Q1, Q2, Q3, Q4, Q5, Q6, Q7;
    public float M, L;
    public float A0, A1, A2, A3, A4, A5, A6, A7;
}

/// <summary>Up to eight query heads' states (named fields: ILGPU keeps them in registers).</summary>
public struct HeadStates
{
    public HeadState H0, H1, H2, H3, H4, H5, H6, H7;
}

public static class AttentionDecodeKernels
{
    /// <summary>Warps a group unless told otherwise (the kernel takes Group.DimX / 32).</summary>
    public const int Warps = 4;
    private const float Log2E = 1.44269504088896341f, Ln2 = 0.693147180559945309f;

    /// <summary>Dynamic shared memory of one group of `warps` warps in floats: each warp's (m, l, acc[headDim]) per query head.</summary>
    public static int SharedFloats(int heads, int headDim, int warps = Warps) => warps * heads * (headDim + 2);

    // The head's 8 query dims of this lane (dims 8 (lane % P) ..), as they are: Score scales the reduced dot product
    // (the query scaled in the registers was recomputed for every key, its multiplies placed next to their uses).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadQuery(ref HeadState h, ArrayView<F4> q4, long first)
    {
        F4 a = q4[first], b = q4[first + 1];
        h.Q0 = a.X;
        h.Q1 = a.Y;
        h.Q2 = a.Z;
        h.Q3 = a.W;
        h.Q4 = b.X;
        h.Q5 = b.Y;
        h.Q6 = b.Z;
        h.Q7 = b.W;
        h.M = float.NegativeInfinity;
        h.L = 0f;
        h.A0 = h.A1 = h.A2 = h.A3 = h.A4 = h.A5 = h.A6 = h.A7 = 0f;
    }

    // A key's score: the lane's 8 dims, reduced over the key's P lanes (every lane takes part), times the softmax scale
    // and log2(e) (scaleLog2): the kernel's scores, maxima and weights are in the exp2 domain (one ex2 each), and its
    // partial maxima go out in the natural one.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Score(in HeadState h, in U4 k, int lanesPerKey, float scaleLog2)
    {
        float dot = h.Q0 * Bf16.Lo(k.X) + h.Q1 * Bf16.Hi(k.X) + h.Q2 * Bf16.Lo(k.Y) + h.Q3 * Bf16.Hi(k.Y)
                  + h.Q4 * Bf16.Lo(k.Z) + h.Q5 * Bf16.Hi(k.Z) + h.Q6 * Bf16.Lo(k.W) + h.Q7 * Bf16.Hi(k.W);
        // Over the key's lanes (hd / 8 of them: 8, 16 or 32), written out: ILGPU keeps loops. Every lane shuffles at
        // every offset and a key of fewer lanes drops what came from beyond them: no branch, so the scores of a
        // tile's keys interleave.
        float d16 = Warp.ShuffleXor(dot, 16);
        dot += lanesPerKey > 16 ? d16 : 0f;
        float d8 = Warp.ShuffleXor(dot, 8);
        dot += lanesPerKey > 8 ? d8 : 0f;
        dot += Warp.ShuffleXor(dot, 4);
        dot += Warp.ShuffleXor(dot, 2);
        dot += Warp.ShuffleXor(dot, 1);
        return dot * scaleLog2;
    }

    // One key: the score reduced over the key's P lanes (every lane takes part), then, when the key is inside the
    // split, the online-softmax update of the lane's 8 output dims with the value row v.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(ref HeadState h, in U4 k, in U4 v, int lanesPerKey, float scaleLog2, bool valid, int roundP)
    {
        float dot = Score(h, k, lanesPerKey, scaleLog2);
        if (!valid) return;
        float m = h.M > dot ? h.M : dot;   // a NaN score propagates
        float corr = FastMath.Exp2(h.M - m), e = FastMath.Exp2(dot - m);
        h.L = h.L * corr + e;
        h.M = m;
        float w = roundP != 0 ? Bf16.Round(e) : e;
        h.A0 = h.A0 * corr + w * Bf16.Lo(v.X);
        h.A1 = h.A1 * corr + w * Bf16.Hi(v.X);
        h.A2 = h.A2 * corr + w * Bf16.Lo(v.Y);
        h.A3 = h.A3 * corr + w * Bf16.Hi(v.Y);
        h.A4 = h.A4 * corr + w * Bf16.Lo(v.Z);
        h.A5 = h.A5 * corr + w * Bf16.Hi(v.Z);
        h.A6 = h.A6 * corr + w * Bf16.Lo(v.W);
        h.A7 = h.A7 * corr + w * Bf16.Hi(v.W);
    }

    // w * v's 8 dims added into the lane's output dims.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddWeighted(ref HeadState h, float w, in U4 v)
    {
        h.A0 += w * Bf16.Lo(v.X);
        h.A1 += w * Bf16.Hi(v.X);
        h.A2 += w * Bf16.Lo(v.Y);
        h.A3 += w * Bf16.Hi(v.Y);
        h.A4 += w * Bf16.Lo(v.Z);
        h.A5 += w * Bf16.Hi(v.Z);
        h.A6 += w * Bf16.Lo(v.W);
        h.A7 += w * Bf16.Hi(v.W);
    }

    // Four keys (a tile's, one a step): their scores, then one online-softmax update: the running max takes the
    // tile's, the sum and output dims are rescaled once and take the four weights. Keys not valid weigh nothing.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile4(ref HeadState h, in KeyTile t, int lanesPerKey, float scaleLog2, int roundP)
    {
        float s0 = Score(h, t.K0, lanesPerKey, scaleLog2), s1 = Score(h, t.K1, lanesPerKey, scaleLog2);
        float s2 = Score(h, t.K2, lanesPerKey, scaleLog2), s3 = Score(h, t.K3, lanesPerKey, scaleLog2);
        if (!t.Ok0) return;   // the tile's first key past the split: so are the rest
        float m = h.M > s0 ? h.M : s0;   // a NaN score propagates
        if (t.Ok1) m = m > s1 ? m : s1;
        if (t.Ok2) m = m > s2 ? m : s2;
        if (t.Ok3) m = m > s3 ? m : s3;
        float corr = FastMath.Exp2(h.M - m);
        float e0 = FastMath.Exp2(s0 - m), e1 = t.Ok1 ? FastMath.Exp2(s1 - m) : 0f, e2 = t.Ok2 ? FastMath.Exp2(s2 - m) : 0f, e3 = t.Ok3 ? FastMath.Exp2(s3 - m) : 0f;
        h.L = h.L * corr + ((e0 + e1) + (e2 + e3));
        h.M = m;
        h.A0 *= corr;
        h.A1 *= corr;
        h.A2 *= corr;
        h.A3 *= corr;
        h.A4 *= corr;
        h.A5 *= corr;
        h.A6 *= corr;
        h.A7 *= corr;
        AddWeighted(ref h, roundP != 0 ? Bf16.Round(e0) : e0, t.V0);
        AddWeighted(ref h, roundP != 0 ? Bf16.Round(e1) : e1, t.V1);
        AddWeighted(ref h, roundP != 0 ? Bf16.Round(e2) : e2, t.V2);
        AddWeighted(ref h, roundP != 0 ? Bf16.Round(e3) : e3, t.V3);
    }

    // A lane's four keys of a tile (steps apart) and whether each is inside the split.
    private struct KeyTile
    {
        public U4 K0, K1, K2, K3, V0, V1, V2, V3;
        public bool Ok0, Ok1, Ok2, Ok3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static KeyTile Load(StreamedU4 kc, StreamedU4 vc, int key, int stride, int end, long rowStride, long col)
        {
            var t = default(KeyTile);
            t.Ok0 = key < end;
            t.Ok1 = key + stride < end;
            t.Ok2 = key + 2 * stride < end;
            t.Ok3 = key + 3 * stride < end;
            if (t.Ok0) { t.K0 = kc[key * rowStride + col]; t.V0 = vc[key * rowStride + col]; }
            if (t.Ok1) { t.K1 = kc[(key + stride) * rowStride + col]; t.V1 = vc[(key + stride) * rowStride + col]; }
            if (t.Ok2) { t.K2 = kc[(key + 2 * stride) * rowStride + col]; t.V2 = vc[(key + 2 * stride) * rowStride + col]; }
            if (t.Ok3) { t.K3 = kc[(key + 3 * stride) * rowStride + col]; t.V3 = vc[(key + 3 * stride) * rowStride + col]; }
            return t;
        }

        // A tile whose four keys all lie inside the split, from c (no guards).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static KeyTile LoadFull(StreamedU4 kc, StreamedU4 vc, in KeyCursor c) => new()
        {
            K0 = kc.Load(c.At, c.K), V0 = vc.Load(c.At, c.V),
            K1 = kc.Load(c.At + c.Apart, c.K + c.Bytes), V1 = vc.Load(c.At + c.Apart, c.V + c.Bytes),
            K2 = kc.Load(c.At + 2 * c.Apart, c.K + 2 * c.Bytes), V2 = vc.Load(c.At + 2 * c.Apart, c.V + 2 * c.Bytes),
            K3 = kc.Load(c.At + 3 * c.Apart, c.K + 3 * c.Bytes), V3 = vc.Load(c.At + 3 * c.Apart, c.V + 3 * c.Bytes),
            Ok0 = true, Ok1 = true, Ok2 = true, Ok3 = true,
        };
    }

    // Where a lane's next full tile starts: its first key's vector (At) and that vector's device addresses in the K and
    // V caches, stepped along together (StreamedU4.Load: CUDA keeps only the addresses), and the vectors (Apart) and
    // bytes between a lane's keys of consecutive steps.
    private struct KeyCursor
    {
        public long At, Apart, K, V;
        public int Bytes;   // a step's distance fits in 32 bits (keys a warp-step x the cache's row bytes)

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public KeyCursor(StreamedU4 kc, StreamedU4 vc, long at, long apart)
        {
            At = at;
            Apart = apart;
            K = kc.AddressOf(at);
            V = vc.AddressOf(at);
            Bytes = (int)(16 * apart);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void NextTile()
        {
            At += 4 * Apart;
            K += 4 * Bytes;
            V += 4 * Bytes;
        }
    }

    // Merges the state held by the lane `offset` away (another key slot, same dims) into h.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MergeLanes(ref HeadState h, int offset)
    {
        float m = Warp.ShuffleXor(h.M, offset), l = Warp.ShuffleXor(h.L, offset);
        float a0 = Warp.ShuffleXor(h.A0, offset), a1 = Warp.ShuffleXor(h.A1, offset), a2 = Warp.ShuffleXor(h.A2, offset), a3 = Warp.ShuffleXor(h.A3, offset);
        float a4 = Warp.ShuffleXor(h.A4, offset), a5 = Warp.ShuffleXor(h.A5, offset), a6 = Warp.ShuffleXor(h.A6, offset), a7 = Warp.ShuffleXor(h.A7, offset);
        float mn = Reduce.MaxNaN(h.M, m);
        float f = h.L == 0f && h.M == float.NegativeInfinity ? 0f : FastMath.Exp2(h.M - mn);
        float g = l == 0f && m == float.NegativeInfinity ? 0f : FastMath.Exp2(m - mn);
        h.M = mn;
        h.L = h.L * f + l * g;
        h.A0 = h.A0 * f + a0 * g;
        h.A1 = h.A1 * f + a1 * g;
        h.A2 = h.A2 * f + a2 * g;
        h.A3 = h.A3 * f + a3 * g;
        h.A4 = h.A4 * f + a4 * g;
        h.A5 = h.A5 * f + a5 * g;
        h.A6 = h.A6 * f + a6 * g;
        h.A7 = h.A7 * f + a7 * g;
    }

    // The warp's merged state of one head into shared memory: [warp][head][m, l, acc[hd]]; lanes of key slot 0 write.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Publish(in HeadState h, ArrayView<float> smem, int g, int heads, int hd, int lane, int lanesPerKey)
    {
        if (lane >= lanesPerKey) return;
        int b = (Warp.WarpIdx * heads + g) * (hd + 2);
        if (lane == 0)
        {
            smem[b] = h.M;
            smem[b + 1] = h.L;
        }
        int d = b + 2 + 8 * lane;
        smem[d] = h.A0;
        smem[d + 1] = h.A1;
        smem[d + 2] = h.A2;
        smem[d + 3] = h.A3;
        smem[d + 4] = h.A4;
        smem[d + 5] = h.A5;
        smem[d + 6] = h.A6;
        smem[d + 7] = h.A7;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StepAll<TG>(ref HeadStates s, in U4 k, in U4 v, int lanesPerKey, float scaleLog2, bool valid, int roundP) where TG : struct, IQueryGroup
    {
        int n = default(TG).Heads;
        Step(ref s.H0, k, v, lanesPerKey, scaleLog2, valid, roundP);
        if (n > 1) Step(ref s.H1, k, v, lanesPerKey, scaleLog2, valid, roundP);
        if (n > 2)
        {
            Step(ref s.H2, k, v, lanesPerKey, scaleLog2, valid, roundP);
            Step(ref s.H3, k, v, lanesPerKey, scaleLog2, valid, roundP);
        }
        if (n > 4)
        {
            Step(ref s.H4, k, v, lanesPerKey, scaleLog2, valid, roundP);
            Step(ref s.H5, k, v, lanesPerKey, scaleLog2, valid, roundP);
            Step(ref s.H6, k, v, lanesPerKey, scaleLog2, valid, roundP);
            Step(ref s.H7, k, v, lanesPerKey, scaleLog2, valid, roundP);
        }
    }

    // kernels

    /// <summary>
    /// Grid (numKvHeads, T, splits), 128 threads, SharedFloats(TG.Heads, headDim) floats of dynamic shared memory.
    /// q [T, numHeads * headDim] as F4; kcache, vcache the layer's rows as U4 (kvDim % 8 == 0); the group's query
    /// heads kvh * G .. (kvh + 1) * G - 1 with G = numHeads / numKvHeads &lt;= TG.Heads; partial as AttentionKernels.Split.
    /// </summary>
    public static void Decode<TG>(ArrayView<F4> q, StreamedU4 kcache, StreamedU4 vcache, ArrayView<float> dst,
        ArrayView<float> partial, ArrayView<F4> qFar, StreamedU4 kfar, ArrayView<int> step, AttentionArgs a)
        where TG : struct, IQueryGroup => Decode<TG, OneStep>(q, kcache, vcache, dst, partial, qFar, kfar, step, a);

    /// <summary>Decode with TT.Steps key steps a tile (FourSteps: one query head a lane only).</summary>
    public static void Decode<TG, TT>(ArrayView<F4> q, StreamedU4 kcache, StreamedU4 vcache, ArrayView<float> dst,
        ArrayView<float> partial, ArrayView<F4> qFar, StreamedU4 kfar, ArrayView<int> step, AttentionArgs a)
        where TG : struct, IQueryGroup
        where TT : struct, IKeyTile
    {
        var smem = SharedMemory.GetDynamic<float>();
        int kvh = Grid.IdxX, t = Grid.IdxY, s = Grid.IdxZ, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int hd = a.HeadDim, heads = default(TG).Heads, group = a.NumHeads / a.NumKvHeads;
        int lanesPerKey = hd / 8, keysPerStep = 32 / lanesPerKey, slot = lane / lanesPerKey, dims = lane % lanesPerKey;
        // The keys of this split: of all of 0 .. StartPos + t, or with an index remap of its far part (the first
        // FarSplits splits, far queries against grouped keys) or of its near part (the window).
        int len = a.Start(step) + t + 1, farEnd = XMath.Max(0, len - a.Window);
        bool far = a.Window > 0 && s < a.FarSplits, near = a.Window > 0 && !far;
        int lo = near ? farEnd : 0, hi = far ? farEnd : len, local = near ? s - a.FarSplits : s;
        // The part's keys shared out evenly among its splits (a step's grid is sized for its bucket's longest length).
        int parts = far ? a.FarSplits : near ? a.Splits - a.FarSplits : a.Splits, per = (hi - lo + parts - 1) / parts;
        int begin = lo + local * per, end = XMath.Min(hi, begin + per);
        if (far)
        {
            q = qFar;
            kcache = kfar;
        }
        long qRow = ((long)t * a.NumHeads + (long)kvh * group) * hd / 4 + 2 * dims;   // F4 index of head 0, dims 8 dims
        float scaleLog2 = a.Scale * Log2E;
        var st = default(HeadStates);
        LoadQuery(ref st.H0, q, qRow);
        if (heads > 1 && group > 1) LoadQuery(ref st.H1, q, qRow + hd / 4);
        if (heads > 2)
        {
            if (group > 2) LoadQuery(ref st.H2, q, qRow + 2 * hd / 4);
            if (group > 3) LoadQuery(ref st.H3, q, qRow + 3 * hd / 4);
        }
        if (heads > 4)
        {
            if (group > 4) LoadQuery(ref st.H4, q, qRow + 4 * hd / 4);
            if (group > 5) LoadQuery(ref st.H5, q, qRow + 5 * hd / 4);
            if (group > 6) LoadQuery(ref st.H6, q, qRow + 6 * hd / 4);
            if (group > 7) LoadQuery(ref st.H7, q, qRow + 7 * hd / 4);
        }

        // Keys of this lane: first + i * stride. Four steps a tile (TT: FourSteps, FullFourSteps): a tile's loads are
        // issued together, then scored. One step at a time: the loads of key i + 1 are issued before key i is used.
        int warps = Group.DimX >> 5, kvDim4 = a.NumKvHeads * hd / 8, stride = warps * keysPerStep;
        long col = (long)kvh * hd / 8 + dims;
        int key = begin + warp * keysPerStep + slot;
        if (default(TT).Steps == 4)
        {
            int first = begin + warp * keysPerStep;
            if (default(TT).Full)
            {
                // Full tiles (every lane's four keys inside the split): no guards, the addresses stepped along.
                var cursor = new KeyCursor(kcache, vcache, (long)key * kvDim4 + col, (long)stride * kvDim4);
                for (; first + 3 * stride + keysPerStep <= end; first += 4 * stride)   // warp-uniform: every lane shuffles
                {
                    Tile4(ref st.H0, KeyTile.LoadFull(kcache, vcache, cursor), lanesPerKey, scaleLog2, a.RoundP);
                    cursor.NextTile();
                }
                key = first + slot;
            }
            // Tiles with guards: every tile, or the split's last one after the full tiles.
            for (; first < end; first += 4 * stride)   // warp-uniform: every lane shuffles
            {
                Tile4(ref st.H0, KeyTile.Load(kcache, vcache, key, stride, end, kvDim4, col), lanesPerKey, scaleLog2, a.RoundP);
                key += 4 * stride;
            }
        }
        else
        {
            U4 k = key < end ? kcache[(long)key * kvDim4 + col] : default;
            U4 v = key < end ? vcache[(long)key * kvDim4 + col] : default;
            for (int first = begin + warp * keysPerStep; first < end; first += stride)   // warp-uniform: every lane shuffles
            {
                int next = key + stride;
                U4 kn = next < end ? kcache[(long)next * kvDim4 + col] : default;
                U4 vn = next < end ? vcache[(long)next * kvDim4 + col] : default;
                StepAll<TG>(ref st, k, v, lanesPerKey, scaleLog2, key < end, a.RoundP);
                key = next;
                k = kn;
                v = vn;
            }
        }

        // Merge the warp's key slots (lanes 8 (or 16) apart hold the same dims), then the warps through shared memory.
        for (int offset = lanesPerKey; offset < 32; offset <<= 1)
        {
            MergeLanes(ref st.H0, offset);
            if (heads > 1) MergeLanes(ref st.H1, offset);
            if (heads > 2)
            {
                MergeLanes(ref st.H2, offset);
                MergeLanes(ref st.H3, offset);
            }
            if (heads > 4)
            {
                MergeLanes(ref st.H4, offset);
                MergeLanes(ref st.H5, offset);
                MergeLanes(ref st.H6, offset);
                MergeLanes(ref st.H7, offset);
            }
        }
        Publish(st.H0, smem, 0, heads, hd, lane, lanesPerKey);
        if (heads > 1) Publish(st.H1, smem, 1, heads, hd, lane, lanesPerKey);
        if (heads > 2)
        {
            Publish(st.H2, smem, 2, heads, hd, lane, lanesPerKey);
            Publish(st.H3, smem, 3, heads, hd, lane, lanesPerKey);
        }
        if (heads > 4)
        {
            Publish(st.H4, smem, 4, heads, hd, lane, lanesPerKey);
            Publish(st.H5, smem, 5, heads, hd, lane, lanesPerKey);
            Publish(st.H6, smem, 6, heads, hd, lane, lanesPerKey);
            Publish(st.H7, smem, 7, heads, hd, lane, lanesPerKey);
        }
        Group.Barrier();
        for (int o = Group.IdxX; o < group * hd; o += Group.DimX)
        {
            int g = o / hd, d = o % hd, h = kvh * group + g;
            float mAll = float.NegativeInfinity;
            for (int w = 0; w < warps; w++) mAll = Reduce.MaxNaN(smem[(w * heads + g) * (hd + 2)], mAll);
            float lAll = 0f, sum = 0f;
            for (int w = 0; w < warps; w++)
            {
                int b = (w * heads + g) * (hd + 2);
                float m = smem[b], l = smem[b + 1];
                float f = l == 0f && m == float.NegativeInfinity ? 0f : FastMath.Exp2(m - mAll);
                lAll += l * f;
                sum += smem[b + 2 + d] * f;
            }
            if (a.Splits == 1) dst[((long)t * a.NumHeads + h) * hd + d] = sum / lAll;
            else
            {
                long outRow = (((long)t * a.NumHeads + h) * a.Splits + s) * (hd + 2);
                if (d == 0)
                {
                    partial[outRow] = mAll * Ln2;   // the combine's maxima are natural
                    partial[outRow + 1] = lAll;
                }
                partial[outRow + 2 + d] = sum;
            }
        }
    }
}

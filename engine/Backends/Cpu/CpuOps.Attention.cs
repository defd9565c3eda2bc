// CPU causal grouped-query attention over an F32 or BF16 KV cache, multi-threaded: a work item reads each cached row it
// needs once, K in one pass for the scores and V in one pass for the outputs (the loops are in CpuOps.AttentionTiles.cs).
// Decode (one token, f32 compute) splits the visible positions into blocks, one item each holding every head, so each
// item streams contiguous rows; the items' softmax states (max, sum, accumulator) are merged at the end. Otherwise an
// item is one kv head and a tile of tokens, over keys in tiles of 64 that stay in cache while all its queries use them.
// Numerics: score = (q . k) * 1/sqrt(headDim) in f32; online softmax over key tiles: e = exp(s - running max) in f32,
// f32 sums, the accumulator rescaled when the max grows; out = acc * (1/sum). A bf16/f16 compute type follows torch's
// CPU flash kernel: tiles of 512 keys in order from key 0, e rounded to that type before it weights V, the sum of the
// unrounded e. An index remap (Self-Extend, DPE, ReRoPE) scores the keys at distance Window or more with the far
// queries against the grouped keys instead, tile by tile (a tile wholly far or wholly near reads one kind of key), under
// the same softmax. Test: CpuKvCacheTests (both cache types), CpuOpsAttentionTests, CpuOpsBf16Tests.Attention*, RemapRopeTests.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Shape of one Attention call: q and dst [Tokens, Heads*HeadDim], query t at position StartPos+t, cached rows of type Cache.</summary>
public readonly record struct AttentionParams(int Tokens, int Heads, int KvHeads, int HeadDim, int StartPos, DType Cache = DType.F32);

public static unsafe partial class CpuOps
{
    [ThreadStatic] private static float[]? _attentionScratch;
    [ThreadStatic] private static float[]? _attentionPartials;

    // Keys per softmax tile: prefill (a tile of one head's rows stays in L1/L2 for all queries of the item), the rounded
    // compute types (torch's kv split), and decode, whose tile of V rows (prefetched while K is read) must sit in L2.
    private const int PrefillKeyTile = 64, RoundedKeyTile = 512, DecodeTileBytes = 256 << 10;
    // Queries (tokens x heads of one group) per prefill item: enough to reuse each key tile, few enough to balance.
    private const int QueriesPerItem = 32;

    // The call's pointers and shape, passed by value to the work items. An index remap adds the far branch: queries at
    // their grouped positions (QFar), the keys at theirs (KFar), and the window below which keys keep true distances.
    private readonly struct AttentionJob(float* q, void* k, void* v, AttentionParams p, DType compute, float* qFar = null, void* kFar = null, int window = 0)
    {
        public readonly nint Q = (nint)q, K = (nint)k, V = (nint)v, QFar = (nint)qFar, KFar = (nint)kFar;
        public readonly int Window = window;
        public bool Remap => QFar != 0;
        public readonly AttentionParams P = p;
        public readonly DType Compute = compute;
        public readonly float Scale = (float)(1.0 / Math.Sqrt(p.HeadDim));
        public readonly int KeyTile = compute != DType.F32 ? RoundedKeyTile : p.Tokens == 1 ? DecodeKeyTile(p) : PrefillKeyTile;
        public int Group => P.Heads / P.KvHeads;
        public int KvDim => P.KvHeads * P.HeadDim;
        public int QDim => P.Heads * P.HeadDim;

        // The far branch as a plain job: its queries against the grouped keys.
        public AttentionJob FarBranch() => new((float*)QFar, (void*)KFar, (void*)V, P, Compute);
    }

    // Rows of a decode tile: a power of two from 32 to 256 whose V rows fit in DecodeTileBytes.
    private static int DecodeKeyTile(in AttentionParams p)
    {
        long rowBytes = (long)p.KvHeads * p.HeadDim * p.Cache.Size();
        int rows = 256;
        while (rows > 32 && rows * rowBytes > DecodeTileBytes) rows /= 2;
        return rows;
    }

    // One work item: kv heads [KvHead0, +KvHeadCount) with all their query heads, tokens [Token0, +TokenCount), keys [Key0, Key1).
    private readonly record struct AttentionItem(int KvHead0, int KvHeadCount, int Token0, int TokenCount, int Key0, int Key1)
    {
        public int Queries(int group) => TokenCount * KvHeadCount * group;
    }

    /// <summary>
    /// dst[t, h] = softmax(q[t, h] . K[0..StartPos+t, h / (Heads/KvHeads)]^T / sqrt(HeadDim)) . V over the layer's kCache,
    /// vCache [maxSeq, kvDim]. With qFar and kFarCache (an index remap), keys at distance window or more from the query
    /// are scored as qFar[t, h] . KFar instead (one softmax over both kinds of score).
    /// </summary>
    public static void Attention(float* q, void* kCache, void* vCache, float* dst, AttentionParams p, DType compute = DType.F32,
        float* qFar = null, void* kFarCache = null, int window = 0)
    {
        if (p.Tokens <= 0 || p.Heads <= 0) return;
        if ((qFar == null) != (kFarCache == null) || (qFar != null && window < 1))
            throw new ArgumentException("an index-remap attention needs qFar, kFarCache and a window of at least 1");
        var job = new AttentionJob(q, kCache, vCache, p, compute, qFar, kFarCache, window);
        switch (p.Cache)
        {
            case DType.F32: Attention<F32Row>(job, dst); break;
            case DType.BF16: Attention<Bf16Row>(job, dst); break;
            default: throw new NotSupportedException($"attention over a {p.Cache.Name()} KV cache");
        }
    }

    private static void Attention<TKv>(AttentionJob job, float* dst) where TKv : struct, IRowReader
    {
        var p = job.P;
        if (p.Tokens == 1 && job.Compute == DType.F32)
        {
            Decode<TKv>(job, dst);
            return;
        }
        int group = job.Group, tokenTile = Math.Max(1, QueriesPerItem / group);
        int tiles = (p.Tokens + tokenTile - 1) / tokenTile, items = p.KvHeads * tiles;
        nint dp = (nint)dst;
        void Item(int item)
        {
            // Later tokens see more keys, so hand them out first for a better balance.
            int rev = items - 1 - item, t0 = rev / p.KvHeads * tokenTile, nt = Math.Min(tokenTile, p.Tokens - t0);
            var it = new AttentionItem(rev % p.KvHeads, 1, t0, nt, 0, p.StartPos + t0 + nt);
            fixed (float* s = Scratch(ref _attentionScratch, ScratchFloats(job, it)))
            {
                Attend<TKv>(job, it, s);
                Finish<TKv>(job, it, s, (float*)dp);
            }
        }
        if ((long)p.Tokens * p.Heads * (p.StartPos + p.Tokens) * p.HeadDim < 16384)
        {
            for (int i = 0; i < items; i++) Item(i);
        }
        else
        {
            CpuParallel.For(items, Item);
        }
    }

    // One token: blocks of positions, every head per block; each block leaves [heads, hd] accumulators, then the
    // running maxima [heads] and sums [heads], in its slot of the partials, merged by MergePartials.
    private static void Decode<TKv>(AttentionJob job, float* dst) where TKv : struct, IRowReader
    {
        var p = job.P;
        int len = p.StartPos + 1, hd = p.HeadDim;
        // About 8 blocks per thread (so the pool can redo a descheduled worker's block cheaply), whole key tiles each.
        int block = (len + CpuParallel.Threads * 8 - 1) / (CpuParallel.Threads * 8);
        block = Math.Max(1, (block + job.KeyTile - 1) / job.KeyTile) * job.KeyTile;
        int items = (len + block - 1) / block, outLength = p.Heads * (hd + 2);
        var partials = _attentionPartials;
        if (partials is null || partials.Length < items * outLength)
        {
            CpuParallel.WaitForWorkers();
            _attentionPartials = partials = GC.AllocateUninitializedArray<float>(Math.Max(items * outLength, 4096), pinned: true);
        }
        void Block(int i, float* output)
        {
            var it = new AttentionItem(0, p.KvHeads, 0, 1, i * block, Math.Min(len, (i + 1) * block));
            fixed (float* s = Scratch(ref _attentionScratch, ScratchFloats(job, it)))
            {
                Attend<TKv>(job, it, s);
                int nq = p.Heads;
                new ReadOnlySpan<float>(s + nq * hd, nq * hd).CopyTo(new Span<float>(output, nq * hd));
                new ReadOnlySpan<float>(s + 2 * nq * hd, 2 * nq).CopyTo(new Span<float>(output + nq * hd, 2 * nq));
            }
        }
        fixed (float* pp = partials)
        {
            if (items == 1)
                Block(0, pp);
            else
                CpuParallel.ForOutputs(items, outLength, items * outLength, pp, Block);
            MergePartials<TKv>(pp, items, p.Heads, hd, dst);
        }
    }

    // out[h] = sum_i e^(m_i - M) acc_i / sum_i e^(m_i - M) l_i over the blocks i, M the largest m_i.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MergePartials<TKv>(float* partials, int items, int heads, int hd, float* dst) where TKv : struct, IRowReader
    {
        int outLength = heads * (hd + 2);
        Span<float> sum = stackalloc float[hd];
        fixed (float* sp = sum)
            for (int h = 0; h < heads; h++)
            {
                float max = float.NegativeInfinity, total = 0;
                for (int i = 0; i < items; i++) max = MathF.Max(max, partials[i * outLength + heads * hd + h]);
                sum.Clear();
                for (int i = 0; i < items; i++)
                {
                    float* part = partials + i * outLength;
                    float w = items == 1 ? 1f : MathF.Exp(part[heads * hd + h] - max);
                    total += w * part[heads * hd + heads + h];
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(part + h * hd, hd), w, sum, sum);
                }
                TensorPrimitives.Multiply(sum, 1f / total, sum);
                Unarrange<TKv>(sp, dst + h * hd, hd);
            }
    }

    // Scratch of one item: arranged queries [nq, hd], accumulators [nq, hd], maxima [nq], sums [nq], scores [nq, keyTile];
    // with a remap also the arranged far queries [nq, hd] and far scores [nq, keyTile].
    private static int ScratchFloats(in AttentionJob job, AttentionItem it)
    {
        int nq = it.Queries(job.Group), per = 2 * job.P.HeadDim + 2 + job.KeyTile;
        return nq * (job.Remap ? per + job.P.HeadDim + job.KeyTile : per);
    }

    private static float[] Scratch(ref float[]? slot, int floats)
    {
        var s = slot;
        if (s is null || s.Length < floats) slot = s = new float[Math.Max(floats, 4096)];
        return s;
    }

    // Runs the item's queries over its keys, tile by tile, leaving the accumulators, maxima and sums in scratch s.
    // Query r is token Token0 + r / (KvHeadCount*group), head KvHead0*group + r % (KvHeadCount*group).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Attend<TKv>(in AttentionJob job, AttentionItem it, float* s) where TKv : struct, IRowReader
    {
        var p = job.P;
        int hd = p.HeadDim, group = job.Group, perToken = it.KvHeadCount * group, nq = it.Queries(group), kt = job.KeyTile;
        float* qa = s, acc = s + nq * hd, max = acc + nq * hd, sum = max + nq, scores = sum + nq;
        float* qaFar = scores + nq * kt, scoresFar = qaFar + nq * hd;
        for (int r = 0; r < nq; r++)
        {
            int t = it.Token0 + r / perToken, h = it.KvHead0 * group + r % perToken;
            Arrange<TKv>((float*)job.Q + (nint)t * job.QDim + h * hd, qa + r * hd, hd);
            if (job.Remap) Arrange<TKv>((float*)job.QFar + (nint)t * job.QDim + h * hd, qaFar + r * hd, hd);
            max[r] = float.NegativeInfinity;
            sum[r] = 0;
        }
        new Span<float>(acc, nq * hd).Clear();
        bool decode = it.KvHeadCount == p.KvHeads && it.TokenCount == 1;
        var far = job.Remap ? job.FarBranch() : default;
        // Keys up to lastFar(ti) = StartPos + Token0 + ti - Window are far for token ti: the item's first token has the fewest.
        int firstLastFar = p.StartPos + it.Token0 - job.Window, lastLastFar = firstLastFar + it.TokenCount - 1;
        for (int s0 = it.Key0; s0 < it.Key1; s0 += kt)
        {
            int tile = Math.Min(kt, it.Key1 - s0);
            bool anyFar = job.Remap && s0 <= lastLastFar, anyNear = !job.Remap || s0 + tile - 1 > firstLastFar;
            if (anyNear)
            {
                if (decode) ScoresByRows<TKv>(job, s0, tile, qa, scores);
                else BlockPass<TKv>(job, it, s0, tile, values: false, qa, scores, acc);
            }
            if (anyFar)
            {
                // Every key of the tile far for every query: its far scores are the scores; else each query's far prefix.
                float* into = anyNear ? scoresFar : scores;
                if (decode) ScoresByRows<TKv>(far, s0, tile, qaFar, into);
                else BlockPass<TKv>(far, it, s0, tile, values: false, qaFar, into, acc);
                if (anyNear)
                    for (int r = 0; r < nq; r++)
                    {
                        int n = Math.Min(tile, firstLastFar + r / perToken - s0 + 1);
                        if (n > 0) new ReadOnlySpan<float>(scoresFar + r * kt, n).CopyTo(new Span<float>(scores + r * kt, n));
                    }
            }
            for (int r = 0; r < nq; r++)
            {
                int rows = Visible(p, it, r / perToken, s0, tile);
                if (rows > 0) OnlineSoftmax(scores + r * kt, rows, ref max[r], ref sum[r], acc + r * hd, hd, job.Compute);
            }
            BlockPass<TKv>(job, it, s0, tile, values: true, qa, scores, acc);
        }
    }

    // Keys of the tile [s0, s0 + tile) that token Token0 + ti sees (0 or negative for none).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Visible(in AttentionParams p, in AttentionItem it, int ti, int s0, int tile) =>
        Math.Min(tile, p.StartPos + it.Token0 + ti + 1 - s0);

    // One tile of scores [n] (overwritten by e) into the running max, sum and accumulator [hd] of one query. One loop
    // for the max and one for exp and the sum (a decode tile holds 32 to 256 keys, so calls would cost as much).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void OnlineSoftmax(float* scores, int n, ref float max, ref float sum, float* acc, int hd, DType compute)
    {
        float m = MathF.Max(max, MaxOf(scores, n));
        float tileSum = ExpSum(scores, n, m);
        if (max == float.NegativeInfinity)
        {
            sum = tileSum;
        }
        else
        {
            float rescale = MathF.Exp(max - m);
            sum = tileSum + rescale * sum;
            if (rescale != 1f) TensorPrimitives.Multiply(new ReadOnlySpan<float>(acc, hd), rescale, new Span<float>(acc, hd));
        }
        max = m;
        if (compute != DType.F32) Round(scores, n, compute);
    }

    // The largest of x[0..n), NaN if any is NaN (n >= 1).
    private static float MaxOf(float* x, int n)
    {
        int i = 0;
        float m = float.NegativeInfinity;
        if (n >= 8)
        {
            var v = Vector256.Load(x);
            for (i = 8; i + 8 <= n; i += 8) v = Vector256.Max(v, Vector256.Load(x + i));
            v = Vector256.Max(v, Vector256.Load(x + n - 8));   // the tail, overlapping
            for (int k = 0; k < 8; k++) m = MathF.Max(m, v.GetElement(k));
            return m;
        }
        for (; i < n; i++) m = MathF.Max(m, x[i]);
        return m;
    }

    // x[i] = exp(x[i] - m) for i < n, returning their f32 sum; every element goes through the same vector exp.
    private static float ExpSum(float* x, int n, float m)
    {
        var mv = Vector256.Create(m);
        var total = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var e = Vector256.Exp(Vector256.Load(x + i) - mv);
            e.Store(x + i);
            total += e;
        }
        float s = Vector256.Sum(total);
        if (i < n)
        {
            Span<float> tail = stackalloc float[8];
            tail.Fill(m);
            new ReadOnlySpan<float>(x + i, n - i).CopyTo(tail);
            var e = Vector256.Exp(Vector256.Create<float>(tail) - mv);
            for (int k = 0; k < n - i; k++)
            {
                x[i + k] = e.GetElement(k);
                s += e.GetElement(k);
            }
        }
        return s;
    }

    // Each query's accumulator times 1/sum, in natural order, to its row and head of dst.
    private static void Finish<TKv>(in AttentionJob job, AttentionItem it, float* s, float* dst) where TKv : struct, IRowReader
    {
        int hd = job.P.HeadDim, group = job.Group, perToken = it.KvHeadCount * group, nq = it.Queries(group);
        float* acc = s + nq * hd, sum = s + 2 * nq * hd + nq;
        for (int r = 0; r < nq; r++)
        {
            var row = new Span<float>(acc + r * hd, hd);
            TensorPrimitives.Multiply(row, 1f / sum[r], row);
            int t = it.Token0 + r / perToken, h = it.KvHead0 * group + r % perToken;
            Unarrange<TKv>(acc + r * hd, dst + (nint)t * job.QDim + h * hd, hd);
        }
    }

    // A query in the reader's Load16 order (pair-split for 16-bit caches), and an accumulator back to natural order.
    private static void Arrange<TKv>(float* x, float* dst, int n) where TKv : struct, IRowReader
    {
        if (TKv.PairOrder) SplitPairs(x, dst, n);
        else new ReadOnlySpan<float>(x, n).CopyTo(new Span<float>(dst, n));
    }

    private static void Unarrange<TKv>(float* x, float* dst, int n) where TKv : struct, IRowReader
    {
        if (TKv.PairOrder) MergePairs(x, dst, n);
        else new ReadOnlySpan<float>(x, n).CopyTo(new Span<float>(dst, n));
    }
}

// CPU rotary embedding from a RopeTable (per-pair InvFreq, cos/sin Magnitude, optional QueryScale) plus KV-cache store,
// and the re-rotation of cached keys when the table changes; the cache holds F32 or BF16 (rounded to nearest even).
// An index remap also writes q and k rotated to their grouped positions (RopeRemap.Query/Key) beside them.
// Test: CpuOpsAttentionTests.Rope*, CpuOpsAttentionTests.Rerotate*, RemapRopeTests.
// Numerics as transformers: angle = f32(p) * InvFreq[j] in f32; cos/sin of that f32 angle (computed in double,
// rounded to f32) times Magnitude in f32; out = x*cos - y*sin / y*cos + x*sin with each product rounded (no FMA).
// A bf16/f16 compute type also rounds cos, sin, every product and every sum to it (apply_rotary_pos_emb in that dtype).
// The angle, cos/sin, rotation and re-rotation formulas are RopeMath's, which the GPU kernels call too.
using LlamaRun.Core;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Backends.Cpu;

/// <summary>Shape of one Rope call: q [Tokens, Heads*HeadDim], k and v [Tokens, KvHeads*HeadDim], positions StartPos+t, a cache of type Cache.</summary>
public readonly record struct RopeParams(int Tokens, int Heads, int KvHeads, int HeadDim, int StartPos, int Layer, DType Cache = DType.F32);

public static unsafe partial class CpuOps
{
    /// <summary>
    /// Rotates q and k in place, scales q by the table's QueryScale, and stores k, v into rows StartPos+t of kCache, vCache
    /// (the layer's [maxSeq, kvDim] block). With an index remap (table.Remap) it also writes q rotated to its grouped
    /// positions to qFar [Tokens, Heads*HeadDim] (scaled alike) and k rotated to its grouped positions to kFarCache.
    /// </summary>
    public static void Rope(float* q, float* k, float* v, void* kCache, void* vCache, RopeTable table, RopeParams p, DType compute = DType.F32,
        float* qFar = null, void* kFarCache = null)
    {
        if (p.Cache is not (DType.F32 or DType.BF16)) throw new NotSupportedException($"a {p.Cache.Name()} KV cache");
        var remap = table.Remap;
        if (remap is not null && (qFar == null || kFarCache == null)) throw new ArgumentException($"table '{table.Method}' remaps positions: qFar and kFarCache are needed");
        remap?.KeyDims?.CheckLayer(p.Layer, p.KvHeads);
        int half = table.InvFreq.Length, kvDim = p.KvHeads * p.HeadDim, qDim = p.Heads * p.HeadDim;
        if (p.Tokens <= 0) return;
        nint qp = (nint)q, kp = (nint)k, vp = (nint)v, kc = (nint)kCache, vc = (nint)vCache, qfp = (nint)qFar, kfc = (nint)kFarCache;
        const int TokenChunk = 16;
        void Chunk(int c)
        {
            Span<float> cos = stackalloc float[half];
            Span<float> sin = stackalloc float[half];
            Span<float> farK = remap is null ? default : stackalloc float[kvDim];
            int t1 = Math.Min(p.Tokens, (c + 1) * TokenChunk);
            for (int t = c * TokenChunk; t < t1; t++)
            {
                int pos = p.StartPos + t;
                float* qt = (float*)qp + (nint)t * qDim;
                float* kt = (float*)kp + (nint)t * kvDim;
                if (remap is not null)
                {
                    // The far branch first, from the unrotated q and k: q to qFar, k to a scratch row stored in kFarCache.
                    float* qf = (float*)qfp + (nint)t * qDim;
                    new ReadOnlySpan<float>(qt, qDim).CopyTo(new Span<float>(qf, qDim));
                    new ReadOnlySpan<float>(kt, kvDim).CopyTo(farK);
                    // One set of grouped positions for all heads, or one a KV head (and its query heads) with key dims.
                    int sets = remap.KeyDims is null ? 1 : p.KvHeads, qPer = p.Heads / sets, kPer = p.KvHeads / sets;
                    fixed (float* fk = farK)
                    {
                        for (int g = 0; g < sets; g++)
                        {
                            GroupedCosSin(table, remap, p.Layer, g, pos, query: true, cos, sin, compute);
                            for (int h = g * qPer; h < (g + 1) * qPer; h++) RotatePairs(qf + h * p.HeadDim, cos, sin, compute);
                            GroupedCosSin(table, remap, p.Layer, g, pos, query: false, cos, sin, compute);
                            for (int h = g * kPer; h < (g + 1) * kPer; h++) RotatePairs(fk + h * p.HeadDim, cos, sin, compute);
                        }
                        StoreRow(fk, (void*)kfc, pos, kvDim, p.Cache);
                    }
                    if (table.QueryScale is { } fs)
                    {
                        float s = fs.At(p.Layer, pos);
                        for (int i = 0; i < qDim; i++) qf[i] = RoundTo(qf[i] * s, compute);
                    }
                }
                CosSin(table, pos, cos, sin);
                if (compute != DType.F32)
                {
                    Round(cos, compute);
                    Round(sin, compute);
                }
                for (int h = 0; h < p.Heads; h++) RotatePairs(qt + h * p.HeadDim, cos, sin, compute);
                for (int h = 0; h < p.KvHeads; h++) RotatePairs(kt + h * p.HeadDim, cos, sin, compute);
                if (table.QueryScale is { } qs)
                {
                    float s = qs.At(p.Layer, pos);
                    for (int i = 0; i < qDim; i++) qt[i] = RoundTo(qt[i] * s, compute);
                }
                StoreRow(kt, (void*)kc, pos, kvDim, p.Cache);
                StoreRow((float*)vp + (nint)t * kvDim, (void*)vc, pos, kvDim, p.Cache);
            }
        }
        int chunks = (p.Tokens + TokenChunk - 1) / TokenChunk;
        if ((long)p.Tokens * (qDim + kvDim) < 65536)
        {
            for (int c = 0; c < chunks; c++) Chunk(c);
        }
        else
        {
            CpuParallel.For(chunks, Chunk);
        }
    }

    // Numerics: each pair is un-rotated with the exact inverse of from's f32 cos/sin (in double, dividing by
    // cos^2 + sin^2, which also removes from's Magnitude) and rounded to f32, which recovers the original key whenever
    // the stored rounding error is under half an ulp; it is then rotated with to's cos/sin by the same f32 formula as
    // Rope. The result is the directly rotated key, or within about an ulp of the pair's norm of it.
    // A BF16 cache is read exactly and the re-rotated key rounded to bf16 again.
    /// <summary>Re-rotates cached keys at positions 0..length-1 of every layer so they equal keys rotated with table `to` instead of `from`.</summary>
    public static void RerotateCache(void* kCache, int numLayers, int maxSeq, int length, int kvHeads, int headDim, RopeTable from, RopeTable to,
        DType cache = DType.F32)
    {
        if (cache is not (DType.F32 or DType.BF16)) throw new NotSupportedException($"a {cache.Name()} KV cache");
        int half = from.InvFreq.Length, kvDim = kvHeads * headDim;
        if (length <= 0 || numLayers <= 0) return;
        nint kc = (nint)kCache;
        void Position(int pos)
        {
            Span<float> c0 = stackalloc float[half];
            Span<float> s0 = stackalloc float[half];
            Span<float> c1 = stackalloc float[half];
            Span<float> s1 = stackalloc float[half];
            CosSin(from, pos, c0, s0);
            CosSin(to, pos, c1, s1);
            Span<float> x = stackalloc float[kvDim];
            for (int l = 0; l < numLayers; l++)
            {
                nint row = (nint)l * maxSeq + pos;
                LoadRow((void*)kc, row, x, cache);
                for (int h = 0; h < kvHeads; h++)
                {
                    int o = h * headDim;
                    for (int j = 0; j < half; j++)
                        RopeMath.Rerotate(x[o + j], x[o + j + half], c0[j], s0[j], c1[j], s1[j], out x[o + j], out x[o + j + half]);
                }
                fixed (float* xp = x) StoreRow(xp, (void*)kc, row, kvDim, cache);
            }
        }
        if ((long)length * numLayers * kvDim < 65536)
        {
            for (int pos = 0; pos < length; pos++) Position(pos);
        }
        else
        {
            CpuParallel.For(length, Position);
        }
    }

    // Row `row` of a [rows, n] cache of type cache, to and from f32 (BF16 rounded to nearest even).
    private static void StoreRow(float* x, void* cache, nint row, int n, DType type)
    {
        if (type == DType.BF16) ConvertToBf16(x, (ushort*)cache + row * n, n);
        else new ReadOnlySpan<float>(x, n).CopyTo(new Span<float>((float*)cache + row * n, n));
    }

    private static void LoadRow(void* cache, nint row, Span<float> x, DType type)
    {
        fixed (float* xp = x)
        {
            if (type == DType.BF16) ConvertBf16((ushort*)cache + row * x.Length, xp, x.Length);
            else new ReadOnlySpan<float>((float*)cache + row * x.Length, x.Length).CopyTo(x);
        }
    }

    // cos[j], sin[j] of the f32 angle f32(pos) * InvFreq[j], each times Magnitude.
    internal static void CosSin(RopeTable table, int pos, Span<float> cos, Span<float> sin)
    {
        float mag = table.Magnitude;
        var inv = table.InvFreq;
        for (int j = 0; j < inv.Length; j++)
        {
            RopeMath.CosSin(RopeMath.Angle(pos, inv[j]), out float c, out float s);
            cos[j] = c * mag;
            sin[j] = s * mag;
        }
    }

    // cos[j], sin[j] of pair j at its grouped position (remap.Query or remap.Key of pos), times Magnitude, rounded to compute.
    // cos/sin of the grouped positions of a query or a key at pos, in KV head kvHead of layer (which matters only with key dims).
    private static void GroupedCosSin(RopeTable table, RopeRemap remap, int layer, int kvHead, int pos, bool query, Span<float> cos, Span<float> sin, DType compute)
    {
        float mag = table.Magnitude;
        var inv = table.InvFreq;
        int floor = remap.Floor ? 1 : 0;
        for (int j = 0; j < inv.Length; j++)
        {
            float g = remap.GroupAt(layer, kvHead, j);
            float at = query ? RopeMath.GroupedQuery(pos, g, remap.Window, floor) : RopeMath.GroupedKey(pos, g, floor);
            RopeMath.CosSin(RopeMath.Angle(at, inv[j]), out float c, out float s);
            cos[j] = c * mag;
            sin[j] = s * mag;
        }
        if (compute != DType.F32)
        {
            Round(cos, compute);
            Round(sin, compute);
        }
    }

    // Pairs (x[j], x[j + half]) for j < half = cos.Length, every product and sum rounded to compute (x*cos +
    // rotate_half(x)*sin evaluated in that dtype); dims from 2*half on are left alone.
    private static void RotatePairs(float* x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, DType compute)
    {
        switch (compute)
        {
            case DType.BF16: RotatePairs<Bf16Rounding>(x, cos, sin); break;
            case DType.F16: RotatePairs<F16Rounding>(x, cos, sin); break;
            default: RotatePairs<NoRounding>(x, cos, sin); break;
        }
    }

    private static void RotatePairs<TR>(float* x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin) where TR : struct, IRounding
    {
        int half = cos.Length;
        for (int j = 0; j < half; j++) RopeMath.Rotate<TR>(x[j], x[j + half], cos[j], sin[j], out x[j], out x[j + half]);
    }
}

// Fused rotary embedding (CpuOps.Rope), consuming a whole RopeTable: rotates q and k in place by the angle
// pos * invFreq[j] on the pairs (x[j], x[j + rotaryDim / 2]), cos and sin times the table's magnitude, multiplies q by
// the query scale of (layer, pos) when the layer's gate is on, and stores k and v in the KV cache's element type at
// the layer's row pos. Groups (a multiple of 32 threads) take one token and a range of its heads; a group first computes
// the token's cos/sin per pair into shared memory (RopeMath, the same f32 values as the CPU). Where the launcher found
// every row 16-byte aligned (RopeArgs.Vectors), a thread takes four pairs at once: 16-byte loads and stores of q, k and
// v, 8 or 16 of the cache, so four times the bytes are in flight a load. Rerotate moves cached keys from one table's
// rotation to another's (dynamic NTK). RopeFar writes an index remap's far queries and grouped keys. Exercised by the
// Rope and Rerotate cases of tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>Scalars of one Rope launch (by value; ILGPU lays the struct out for the kernel). LayerRow0: the layer's first
/// cache row (token t goes to row LayerRow0 + StartPos + t). StepPosition 1: StartPos is read from the decode step's
/// device scalars (DecodeStep.Position), so a replayed launch follows the step. HeadsPerGroup: heads (q heads, then KV
/// heads) each group of a token rotates. Vectors 1: q, k, v and the caches are 16-byte aligned and RotaryDim % 8 == 0,
/// HeadDim % 4 == 0 (set by the launcher), so four pairs go at once.</summary>
public readonly record struct RopeArgs(
    int NumHeads, int NumKvHeads, int HeadDim, int RotaryDim, int StartPos, int LayerRow0,
    float Magnitude, float QueryScaleContext, int QueryScaleOn, int HeadsPerGroup, int StepPosition = 0, int Vectors = 0)
{
    /// <summary>The position of the launch's first token: StartPos, or the decode step's position.</summary>
    public int Start(ArrayView<int> step) => StepPosition != 0 ? step[DecodeStep.Position] : StartPos;
}

public static class RopeKernels
{
    /// <summary>Most pairs one table may have (the shared cos/sin arrays are this long).</summary>
    public const int MaxPairs = 256;

    // kernels

    /// <summary>
    /// Grid (T, ceil((numHeads + numKvHeads) / HeadsPerGroup)): group (t, g) rotates heads g HeadsPerGroup .. of token t
    /// (q heads first, then KV heads, whose k and v it also stores). Few tokens take one head a group, so a decode step
    /// spreads over many multiprocessors; many tokens take all heads a group, so each token's cos/sin is computed once.
    /// </summary>
    public static void Rope<TR, TC, TE>(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<TC> kcache,
        ArrayView<TC> vcache, ArrayView<float> invFreq, ArrayView<int> step, RopeArgs a)
        where TR : struct, IRounding
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        var cs = SharedMemory.Allocate<float>(MaxPairs);
        var sn = SharedMemory.Allocate<float>(MaxPairs);
        var r = default(TR);
        int t = Grid.IdxX, pos = a.Start(step) + t, half = a.RotaryDim / 2;
        int h0 = Grid.IdxY * a.HeadsPerGroup, h1 = XMath.Min(a.NumHeads + a.NumKvHeads, h0 + a.HeadsPerGroup);
        for (int j = Group.IdxX; j < half; j += Group.DimX)
        {
            RopeMath.CosSin(RopeMath.Angle(pos, invFreq[j]), out float c, out float s);
            cs[j] = r.Round(c * a.Magnitude);
            sn[j] = r.Round(s * a.Magnitude);
        }
        Group.Barrier();
        float qs = a.QueryScaleOn != 0 ? RopeMath.QueryScale(pos, a.QueryScaleContext) : 1f;
        int kvDim = a.NumKvHeads * a.HeadDim;
        long qRow = (long)t * a.NumHeads * a.HeadDim, kRow = (long)t * kvDim, cRow = (long)(a.LayerRow0 + pos) * kvDim;
        int q0 = h0, q1 = XMath.Min(h1, a.NumHeads);   // this group's q heads, then its KV heads kv0 .. kv1 - 1
        int kv0 = XMath.Max(h0, a.NumHeads) - a.NumHeads, kv1 = XMath.Max(h1, a.NumHeads) - a.NumHeads;
        RotateQueries<TR>(q, q, qRow, q0, q1, cs, sn, qs, a);
        RotateKeys<TR, TC, TE>(k, kRow, kcache, cRow, kv0, kv1, cs, sn, writeBack: true, a);
        // The values of this group's KV heads.
        if (a.Vectors != 0)
        {
            var v4 = v.Cast<F4>();
            for (int d = kv0 * a.HeadDim + 4 * Group.IdxX; d < kv1 * a.HeadDim; d += 4 * Group.DimX) default(TE).Store4(vcache, cRow + d, v4[(kRow + d) / 4]);
        }
        else
        {
            for (int d = kv0 * a.HeadDim + Group.IdxX; d < kv1 * a.HeadDim; d += Group.DimX) vcache[cRow + d] = default(TE).Store(v[kRow + d]);
        }
    }

    /// <summary>
    /// The far branch of an index remap (RopeRemap), launched before Rope on the same unrotated q and k and the same grid:
    /// q rotated to its grouped positions RopeMath.GroupedQuery (query scale included) into qFar, k rotated to its grouped
    /// positions RopeMath.GroupedKey into kfar at the layer's row pos. groups[j]: pair j's group size; with DPE's key
    /// dims, groupStride is the pair count and groups[kvHead * groupStride + j] the size in each KV head (one head a group).
    /// </summary>
    public static void RopeFar<TR, TC, TE>(ArrayView<float> q, ArrayView<float> k, ArrayView<float> qFar, ArrayView<TC> kfar,
        ArrayView<float> invFreq, ArrayView<float> groups, ArrayView<int> step, RopeArgs a, int window, int floor, int groupStride)
        where TR : struct, IRounding
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        var qc = SharedMemory.Allocate<float>(MaxPairs);
        var qs = SharedMemory.Allocate<float>(MaxPairs);
        var kc = SharedMemory.Allocate<float>(MaxPairs);
        var ks = SharedMemory.Allocate<float>(MaxPairs);
        var r = default(TR);
        int t = Grid.IdxX, pos = a.Start(step) + t, half = a.RotaryDim / 2;
        int h0 = Grid.IdxY * a.HeadsPerGroup, h1 = XMath.Min(a.NumHeads + a.NumKvHeads, h0 + a.HeadsPerGroup);
        int kvHead = h0 < a.NumHeads ? h0 / (a.NumHeads / a.NumKvHeads) : h0 - a.NumHeads;
        long row = (long)kvHead * groupStride;
        for (int j = Group.IdxX; j < half; j += Group.DimX)
        {
            float g = groups[row + j];
            RopeMath.CosSin(RopeMath.Angle(RopeMath.GroupedQuery(pos, g, window, floor), invFreq[j]), out float c, out float s);
            qc[j] = r.Round(c * a.Magnitude);
            qs[j] = r.Round(s * a.Magnitude);
            RopeMath.CosSin(RopeMath.Angle(RopeMath.GroupedKey(pos, g, floor), invFreq[j]), out c, out s);
            kc[j] = r.Round(c * a.Magnitude);
            ks[j] = r.Round(s * a.Magnitude);
        }
        Group.Barrier();
        float scale = a.QueryScaleOn != 0 ? RopeMath.QueryScale(pos, a.QueryScaleContext) : 1f;
        int kvDim = a.NumKvHeads * a.HeadDim;
        long qRow = (long)t * a.NumHeads * a.HeadDim, kRow = (long)t * kvDim, cRow = (long)(a.LayerRow0 + pos) * kvDim;
        int q0 = h0, q1 = XMath.Min(h1, a.NumHeads);
        int kv0 = XMath.Max(h0, a.NumHeads) - a.NumHeads, kv1 = XMath.Max(h1, a.NumHeads) - a.NumHeads;
        RotateQueries<TR>(q, qFar, qRow, q0, q1, qc, qs, scale, a);
        RotateKeys<TR, TC, TE>(k, kRow, kfar, cRow, kv0, kv1, kc, ks, writeBack: false, a);
    }

    // Query heads [q0, q1) of row qRow of src rotated by (cs, sn) pair by pair, times scale, into dst (src itself for Rope);
    // the dims past the rotary ones only scaled.
    private static void RotateQueries<TR>(ArrayView<float> src, ArrayView<float> dst, long qRow, int q0, int q1,
        ArrayView<float> cs, ArrayView<float> sn, float scale, RopeArgs a)
        where TR : struct, IRounding
    {
        var r = default(TR);
        if (a.Vectors != 0)
        {
            RotateQueries4<TR>(src.Cast<F4>(), dst.Cast<F4>(), qRow / 4, q0, q1, cs, sn, scale, a);
            return;
        }
        int half = a.RotaryDim / 2, perHead = half + a.HeadDim - a.RotaryDim;
        for (int e = Group.IdxX; e < (q1 - q0) * perHead; e += Group.DimX)
        {
            int j = e % perHead;
            long x = qRow + (q0 + e / perHead) * a.HeadDim;
            if (j < half)
            {
                RopeMath.Rotate<TR>(src[x + j], src[x + j + half], cs[j], sn[j], out float y0, out float y1);
                dst[x + j] = r.Round(y0 * scale);
                dst[x + j + half] = r.Round(y1 * scale);
            }
            else
            {
                long d = x + a.RotaryDim + (j - half);
                dst[d] = r.Round(src[d] * scale);
            }
        }
    }

    // KV heads [kv0, kv1) of row kRow of k rotated by (cs, sn) into cache rows cRow (the other dims copied); writeBack:
    // the rotated key into k too.
    private static void RotateKeys<TR, TC, TE>(ArrayView<float> k, long kRow, ArrayView<TC> cache, long cRow, int kv0, int kv1,
        ArrayView<float> cs, ArrayView<float> sn, bool writeBack, RopeArgs a)
        where TR : struct, IRounding
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        if (a.Vectors != 0)
        {
            RotateKeys4<TR, TC, TE>(k.Cast<F4>(), kRow, cache, cRow, kv0, kv1, cs, sn, writeBack, a);
            return;
        }
        int half = a.RotaryDim / 2, perHead = half + a.HeadDim - a.RotaryDim;
        for (int e = Group.IdxX; e < (kv1 - kv0) * perHead; e += Group.DimX)
        {
            int j = e % perHead, o = (kv0 + e / perHead) * a.HeadDim;
            if (j < half)
            {
                RopeMath.Rotate<TR>(k[kRow + o + j], k[kRow + o + j + half], cs[j], sn[j], out float y0, out float y1);
                if (writeBack)
                {
                    k[kRow + o + j] = y0;
                    k[kRow + o + j + half] = y1;
                }
                cache[cRow + o + j] = default(TE).Store(y0);
                cache[cRow + o + j + half] = default(TE).Store(y1);
            }
            else
            {
                int d = o + a.RotaryDim + (j - half);
                cache[cRow + d] = default(TE).Store(k[kRow + d]);
            }
        }
    }

    // RotateQueries four pairs a thread: q4 and dst4 the rows as F4, qRow4 the F4 index of the token's row.
    private static void RotateQueries4<TR>(ArrayView<F4> q4, ArrayView<F4> dst4, long qRow4, int q0, int q1,
        ArrayView<float> cs, ArrayView<float> sn, float scale, RopeArgs a)
        where TR : struct, IRounding
    {
        var r = default(TR);
        int half4 = a.RotaryDim / 8, head4 = a.HeadDim / 4, perHead = head4 - half4;   // half4 pair vectors, then the non-rotary ones
        for (int e = Group.IdxX; e < (q1 - q0) * perHead; e += Group.DimX)
        {
            int j = e % perHead;
            long x = qRow4 + (long)(q0 + e / perHead) * head4;
            if (j < half4)
            {
                Rotate4<TR>(q4[x + j], q4[x + j + half4], cs, sn, 4 * j, out F4 y0, out F4 y1);
                dst4[x + j] = new F4(r.Round(y0.X * scale), r.Round(y0.Y * scale), r.Round(y0.Z * scale), r.Round(y0.W * scale));
                dst4[x + j + half4] = new F4(r.Round(y1.X * scale), r.Round(y1.Y * scale), r.Round(y1.Z * scale), r.Round(y1.W * scale));
            }
            else
            {
                long d = x + j + half4;
                F4 u = q4[d];
                dst4[d] = new F4(r.Round(u.X * scale), r.Round(u.Y * scale), r.Round(u.Z * scale), r.Round(u.W * scale));
            }
        }
    }

    // RotateKeys four pairs a thread: k4 the keys as F4; kRow and cRow in elements (multiples of 4).
    private static void RotateKeys4<TR, TC, TE>(ArrayView<F4> k4, long kRow, ArrayView<TC> cache, long cRow, int kv0, int kv1,
        ArrayView<float> cs, ArrayView<float> sn, bool writeBack, RopeArgs a)
        where TR : struct, IRounding
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        int half4 = a.RotaryDim / 8, head4 = a.HeadDim / 4, perHead = head4 - half4;   // half4 pair vectors, then the non-rotary ones
        for (int e = Group.IdxX; e < (kv1 - kv0) * perHead; e += Group.DimX)
        {
            int j = e % perHead, o = (kv0 + e / perHead) * a.HeadDim;
            long x = (kRow + o) / 4;
            if (j < half4)
            {
                Rotate4<TR>(k4[x + j], k4[x + j + half4], cs, sn, 4 * j, out F4 y0, out F4 y1);
                if (writeBack)
                {
                    k4[x + j] = y0;
                    k4[x + j + half4] = y1;
                }
                default(TE).Store4(cache, cRow + o + 4 * j, y0);
                default(TE).Store4(cache, cRow + o + 4 * (j + half4), y1);
            }
            else
            {
                default(TE).Store4(cache, cRow + o + 4 * (j + half4), k4[x + j + half4]);
            }
        }
    }

    // Pairs p .. p + 3: (u, w) element by element rotated by (cs[p + i], sn[p + i]), as RopeMath.Rotate does one.
    private static void Rotate4<TR>(F4 u, F4 w, ArrayView<float> cs, ArrayView<float> sn, int p, out F4 y0, out F4 y1)
        where TR : struct, IRounding
    {
        RopeMath.Rotate<TR>(u.X, w.X, cs[p], sn[p], out float a0, out float b0);
        RopeMath.Rotate<TR>(u.Y, w.Y, cs[p + 1], sn[p + 1], out float a1, out float b1);
        RopeMath.Rotate<TR>(u.Z, w.Z, cs[p + 2], sn[p + 2], out float a2, out float b2);
        RopeMath.Rotate<TR>(u.W, w.W, cs[p + 3], sn[p + 3], out float a3, out float b3);
        y0 = new F4(a0, a1, a2, a3);
        y1 = new F4(b0, b1, b2, b3);
    }

    /// <summary>Grid (length, numLayers): the key at position p of each layer goes from table `from` to table `to`.</summary>
    public static void Rerotate<TC, TE>(ArrayView<TC> kcache, ArrayView<float> invFrom, ArrayView<float> invTo,
        int maxSeq, int numKvHeads, int headDim, int rotaryDim, float magFrom, float magTo)
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        var c0 = SharedMemory.Allocate<float>(MaxPairs);
        var s0 = SharedMemory.Allocate<float>(MaxPairs);
        var c1 = SharedMemory.Allocate<float>(MaxPairs);
        var s1 = SharedMemory.Allocate<float>(MaxPairs);
        int p = Grid.IdxX, layer = Grid.IdxY, half = rotaryDim / 2;
        for (int j = Group.IdxX; j < half; j += Group.DimX)
        {
            RopeMath.CosSin(RopeMath.Angle(p, invFrom[j]), out float cf, out float sf);
            RopeMath.CosSin(RopeMath.Angle(p, invTo[j]), out float ct, out float st);
            c0[j] = cf * magFrom;
            s0[j] = sf * magFrom;
            c1[j] = ct * magTo;
            s1[j] = st * magTo;
        }
        Group.Barrier();
        long row = ((long)layer * maxSeq + p) * numKvHeads * headDim;
        for (int e = Group.IdxX; e < numKvHeads * half; e += Group.DimX)
        {
            int j = e % half;
            long o = row + (e / half) * headDim + j;
            RopeMath.Rerotate(default(TE).Load(kcache[o]), default(TE).Load(kcache[o + half]), c0[j], s0[j], c1[j], s1[j], out float y0, out float y1);
            kcache[o] = default(TE).Store(y0);
            kcache[o + half] = default(TE).Store(y1);
        }
    }
}

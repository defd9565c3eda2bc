// Causal grouped-query attention over the KV cache for decode and short prefills (CpuOps.Attention); softmax scale
// 1/sqrt(headDim). Split: one group of 4 warps per (head, query, key split); the warps stride over the split's keys
// with an online softmax (running max m, sum l, weighted values acc), then merge in shared memory. With one split
// the group writes dst; with several it writes (m, l, acc) to partial and Combine merges the splits. Tiled (bf16 cache,
// head dim <= 128 and a multiple of 8, up to 8 query heads per KV head): one group per (KV head, query, split) stages
// 64-key K/V tiles in shared memory with 16-byte loads, so the query heads of a group share one read of the cache.
// Softmax weights are rounded to bf16 before they weight V when roundP is 1 (bf16 compute); sums use the unrounded
// weights. Prefill over longer spans runs in AttentionFlash.cs. Exercised by the Attention cases of tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>Scalars of one decode/split attention launch: queries t see cache positions 0 .. StartPos + t.</summary>
public readonly record struct AttentionArgs(int NumHeads, int NumKvHeads, int HeadDim, int StartPos, int SplitLen, int Splits, float Scale, int RoundP);

public static class AttentionKernels
{
    public const int Warps = 4, GroupSize = 32 * Warps, MaxHeadDim = 256;
    public const int TileKeys = 64, TileMaxHeadDim = 128, TileMaxGroup = 8, TileRow = TileMaxHeadDim + 8;

    // kernels

    /// <summary>
    /// Grid (numHeads, T, splits), 128 threads. q [T, numHeads * headDim]; kcache/vcache [positions, numKvHeads * headDim]
    /// from the layer's first row; partial [T, numHeads, splits, headDim + 2] holds (m, l, acc) per split.
    /// </summary>
    public static void Split<TC, TE>(ArrayView<float> q, ArrayView<TC> kcache, ArrayView<TC> vcache, ArrayView<float> dst,
        ArrayView<float> partial, AttentionArgs a)
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        var smM = SharedMemory.Allocate<float>(Warps);
        var smL = SharedMemory.Allocate<float>(Warps);
        var smAcc = SharedMemory.Allocate<float>(Warps * MaxHeadDim);
        int h = Grid.IdxX, t = Grid.IdxY, s = Grid.IdxZ, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int hd = a.HeadDim, len = a.StartPos + t + 1, kvh = h / (a.NumHeads / a.NumKvHeads), kvDim = a.NumKvHeads * hd;
        int begin = s * a.SplitLen, end = XMath.Min(len, begin + a.SplitLen);
        long qRow = ((long)t * a.NumHeads + h) * hd;
        var qv = new float[MaxHeadDim / 32];
        var acc = new float[MaxHeadDim / 32];
        for (int i = 0; i < MaxHeadDim / 32; i++)
        {
            int d = lane + 32 * i;
            qv[i] = d < hd ? q[qRow + d] : 0f;
            acc[i] = 0f;
        }
        float m = float.NegativeInfinity, l = 0f;
        for (int p = begin + warp; p < end; p += Warps)
        {
            long row = (long)p * kvDim + kvh * hd;
            float dot = 0f;
            for (int i = 0; i < MaxHeadDim / 32; i++)
            {
                int d = lane + 32 * i;
                if (d < hd) dot += qv[i] * default(TE).Load(kcache[row + d]);
            }
            dot = Reduce.WarpSum(dot) * a.Scale;
            float mn = m > dot ? m : dot;   // a NaN score propagates
            float corr = XMath.Exp(m - mn), e = XMath.Exp(dot - mn);
            l = l * corr + e;
            float ew = a.RoundP != 0 ? Bf16.Round(e) : e;
            for (int i = 0; i < MaxHeadDim / 32; i++)
            {
                int d = lane + 32 * i;
                if (d < hd) acc[i] = acc[i] * corr + ew * default(TE).Load(vcache[row + d]);
            }
            m = mn;
        }
        if (lane == 0)
        {
            smM[warp] = m;
            smL[warp] = l;
        }
        for (int i = 0; i < MaxHeadDim / 32; i++)
        {
            int d = lane + 32 * i;
            if (d < hd) smAcc[warp * MaxHeadDim + d] = acc[i];
        }
        Group.Barrier();
        float mAll = float.NegativeInfinity;
        for (int w = 0; w < Warps; w++) mAll = Reduce.MaxNaN(smM[w], mAll);
        var f = new float[Warps];
        float lAll = 0f;
        for (int w = 0; w < Warps; w++)
        {
            f[w] = smL[w] == 0f && smM[w] == float.NegativeInfinity ? 0f : XMath.Exp(smM[w] - mAll);
            lAll += smL[w] * f[w];
        }
        long outRow = a.Splits == 1 ? qRow : (((long)t * a.NumHeads + h) * a.Splits + s) * (hd + 2);
        if (a.Splits > 1 && Group.IdxX == 0)
        {
            partial[outRow] = mAll;
            partial[outRow + 1] = lAll;
        }
        for (int d = Group.IdxX; d < hd; d += Group.DimX)
        {
            float sum = 0f;
            for (int w = 0; w < Warps; w++) sum += smAcc[w * MaxHeadDim + d] * f[w];
            if (a.Splits == 1) dst[outRow + d] = sum / lAll;
            else partial[outRow + 2 + d] = sum;
        }
    }

    /// <summary>Grid (numHeads, T): dst = sum_s acc_s exp(m_s - M) / sum_s l_s exp(m_s - M) over the splits.</summary>
    public static void Combine(ArrayView<float> partial, ArrayView<float> dst, int numHeads, int headDim, int splits)
    {
        int h = Grid.IdxX, t = Grid.IdxY, stride = headDim + 2;
        long first = ((long)t * numHeads + h) * splits * stride;
        float mAll = float.NegativeInfinity;
        for (int s = 0; s < splits; s++) mAll = Reduce.MaxNaN(partial[first + s * stride], mAll);
        float lAll = 0f;
        for (int s = 0; s < splits; s++)
        {
            float ms = partial[first + s * stride], ls = partial[first + s * stride + 1];
            if (!(ls == 0f && ms == float.NegativeInfinity)) lAll += ls * XMath.Exp(ms - mAll);
        }
        long outRow = ((long)t * numHeads + h) * headDim;
        for (int d = Group.IdxX; d < headDim; d += Group.DimX)
        {
            float sum = 0f;
            for (int s = 0; s < splits; s++)
            {
                float ms = partial[first + s * stride], ls = partial[first + s * stride + 1];
                if (!(ls == 0f && ms == float.NegativeInfinity)) sum += partial[first + s * stride + 2 + d] * XMath.Exp(ms - mAll);
            }
            dst[outRow + d] = sum / lAll;
        }
    }

    /// <summary>
    /// Grid (numKvHeads, T, splits), 128 threads; bf16 cache, group = numHeads / numKvHeads &lt;= 8, headDim &lt;= 128 and a
    /// multiple of 8. Per 64-key tile: stage K and V (16-byte loads); scores s[g][j] = q_g . k_j * scale; per head an
    /// online-softmax update in shared memory; then each thread updates its (head, dim) outputs. Output as Split.
    /// </summary>
    public static void Tiled(ArrayView<float> q, ArrayView<ushort> kcache, ArrayView<ushort> vcache, ArrayView<float> dst,
        ArrayView<float> partial, AttentionArgs a)
    {
        var ks = SharedMemory.Allocate<U4>(TileKeys * TileRow / 8);
        var vs = SharedMemory.Allocate<U4>(TileKeys * TileRow / 8);
        var qs = SharedMemory.Allocate<float>(TileMaxGroup * TileMaxHeadDim);
        var ps = SharedMemory.Allocate<float>(TileMaxGroup * TileKeys);
        var mrun = SharedMemory.Allocate<float>(TileMaxGroup);
        var lrun = SharedMemory.Allocate<float>(TileMaxGroup);
        var corr = SharedMemory.Allocate<float>(TileMaxGroup);
        var ks32 = ks.Cast<uint>();
        var vs16 = vs.Cast<ushort>();
        var k4 = kcache.Cast<U4>();
        var v4 = vcache.Cast<U4>();
        int kvh = Grid.IdxX, t = Grid.IdxY, s = Grid.IdxZ, tid = Group.IdxX, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int hd = a.HeadDim, group = a.NumHeads / a.NumKvHeads, kvDim = a.NumKvHeads * hd, chunks = hd / 8;
        int len = a.StartPos + t + 1, begin = s * a.SplitLen, end = XMath.Min(len, begin + a.SplitLen);
        long qRow = ((long)t * a.NumHeads + (long)kvh * group) * hd;
        for (int i = tid; i < group * hd; i += GroupSize) qs[i / hd * TileMaxHeadDim + i % hd] = q[qRow + i] * a.Scale;
        if (tid < TileMaxGroup)
        {
            mrun[tid] = float.NegativeInfinity;
            lrun[tid] = 0f;
        }
        var acc = new float[TileMaxGroup];   // outputs o = tid + 128 i, as (head o / hd, dim o % hd)
        for (int i = 0; i < TileMaxGroup; i++) acc[i] = 0f;
        for (int k0 = begin; k0 < end; k0 += TileKeys)
        {
            int n = XMath.Min(TileKeys, end - k0);
            Group.Barrier();   // the previous tile is consumed (and q and the running stats are written)
            for (int c = tid; c < n * chunks; c += GroupSize)
            {
                int j = c / chunks, d = c % chunks * 8;
                long src = ((long)(k0 + j) * kvDim + (long)kvh * hd + d) / 8;
                ks[(j * TileRow + d) / 8] = k4[src];
                vs[(j * TileRow + d) / 8] = v4[src];
            }
            Group.Barrier();
            for (int idx = tid; idx < group * TileKeys; idx += GroupSize)
            {
                int g = idx / TileKeys, j = idx % TileKeys;
                float sc = float.NegativeInfinity;
                if (j < n)
                {
                    sc = 0f;
                    int kr = j * TileRow / 2, qr = g * TileMaxHeadDim;
                    for (int d2 = 0; d2 < hd / 2; d2++)
                    {
                        uint kk = ks32[kr + d2];
                        sc += qs[qr + 2 * d2] * Bf16.Lo(kk) + qs[qr + 2 * d2 + 1] * Bf16.Hi(kk);
                    }
                }
                ps[g * TileKeys + j] = sc;
            }
            Group.Barrier();
            for (int g = warp; g < group; g += Warps)
            {
                float x0 = ps[g * TileKeys + lane], x1 = ps[g * TileKeys + lane + 32];
                float mold = mrun[g], mnew = XMath.Max(mold, Reduce.WarpMax(XMath.Max(x0, x1)));
                float e0 = XMath.Exp(x0 - mnew), e1 = XMath.Exp(x1 - mnew);
                float sum = Reduce.WarpSum(e0 + e1);
                ps[g * TileKeys + lane] = a.RoundP != 0 ? Bf16.Round(e0) : e0;
                ps[g * TileKeys + lane + 32] = a.RoundP != 0 ? Bf16.Round(e1) : e1;
                if (lane == 0)
                {
                    float cr = mold == float.NegativeInfinity ? 0f : XMath.Exp(mold - mnew);
                    corr[g] = cr;
                    lrun[g] = lrun[g] * cr + sum;
                    mrun[g] = mnew;
                }
            }
            Group.Barrier();
            for (int i = 0; i < TileMaxGroup; i++)
            {
                int o = tid + GroupSize * i, g = o / hd, d = o % hd;
                if (g < group)
                {
                    float sum = acc[i] * corr[g];
                    for (int j = 0; j < n; j++) sum += ps[g * TileKeys + j] * Bf16.ToF32(vs16[j * TileRow + d]);
                    acc[i] = sum;
                }
            }
        }
        Group.Barrier();
        for (int i = 0; i < TileMaxGroup; i++)
        {
            int o = tid + GroupSize * i, g = o / hd, d = o % hd;
            if (g >= group) continue;
            int h = kvh * group + g;
            if (a.Splits == 1) dst[((long)t * a.NumHeads + h) * hd + d] = acc[i] / lrun[g];
            else
            {
                long outRow = (((long)t * a.NumHeads + h) * a.Splits + s) * (hd + 2);
                if (d == 0)
                {
                    partial[outRow] = mrun[g];
                    partial[outRow + 1] = lrun[g];
                }
                partial[outRow + 2 + d] = acc[i];
            }
        }
    }
}

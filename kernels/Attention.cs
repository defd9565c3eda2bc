// Causal grouped-query attention over the KV cache for decode and short prefills (CpuOps.Attention); softmax scale
// 1/sqrt(headDim). Split: one group of 4 warps per (head, query, key split); the warps stride over the split's keys
// with an online softmax (running max m, sum l, weighted values acc), then merge in shared memory. With one split
// the group writes dst; with several it writes (m, l, acc) to partial and Combine merges the splits. Softmax weights
// are rounded to bf16 before they weight V when roundP is 1 (bf16 compute); sums use the unrounded weights. Split is
// the general kernel (any head dim up to 256, an f32 or bf16 cache); AttentionDecode.cs reads a bf16 cache faster and
// AttentionFlash.cs runs long prefills; an index remap (Self-Extend, DPE, ReRoPE) runs here, scoring distant keys with
// the far queries against the grouped keys, unless the backend takes it through those two in two passes (far keys,
// near keys) merged by their softmax statistics. Exercised by the Attention cases of tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Algorithms;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>
/// Scalars of one decode/split attention launch: queries t see cache positions 0 .. StartPos + t. Window above 0 (the
/// split kernel): an index remap, keys at distance Window or more scored with qFar against kfar. FarSplits (the decode
/// kernel, with Window above 0): splits 0 .. FarSplits - 1 score the far keys [0, i - Window] with qFar against kfar,
/// the others the near keys (i - Window, i] with q against kcache. StepPosition 1: StartPos is read from the decode
/// step's device scalars (DecodeStep.Position); the grid then holds splits for the longest length of the step's bucket,
/// and the split kernel's splits past the keys are empty (the decode kernel shares a query's keys out evenly among its
/// splits instead: SplitLen is the split kernel's).
/// </summary>
public readonly record struct AttentionArgs(int NumHeads, int NumKvHeads, int HeadDim, int StartPos, int SplitLen, int Splits, float Scale, int RoundP,
    int Window = 0, int FarSplits = 0, int StepPosition = 0)
{
    /// <summary>The position of the launch's first query: StartPos, or the decode step's position.</summary>
    public int Start(ArrayView<int> step) => StepPosition != 0 ? step[DecodeStep.Position] : StartPos;
}

public static class AttentionKernels
{
    public const int Warps = 4, GroupSize = 32 * Warps, MaxHeadDim = 256;


    // kernels

    /// <summary>
    /// Grid (numHeads, T, splits), 128 threads. q [T, numHeads * headDim]; kcache/vcache [positions, numKvHeads * headDim]
    /// from the layer's first row; partial [T, numHeads, splits, headDim + 2] holds (m, l, acc) per split. With
    /// a.Window above 0, qFar and kfar (shaped as q and kcache) score the keys at distance Window or more.
    /// </summary>
    public static void Split<TC, TE>(ArrayView<float> q, ArrayView<TC> kcache, ArrayView<TC> vcache, ArrayView<float> dst,
        ArrayView<float> partial, ArrayView<float> qFar, ArrayView<TC> kfar, ArrayView<int> step, AttentionArgs a)
        where TC : unmanaged
        where TE : struct, IElement<TC>
    {
        var smM = SharedMemory.Allocate<float>(Warps);
        var smL = SharedMemory.Allocate<float>(Warps);
        var smAcc = SharedMemory.Allocate<float>(Warps * MaxHeadDim);
        int h = Grid.IdxX, t = Grid.IdxY, s = Grid.IdxZ, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int start = a.Start(step), hd = a.HeadDim, len = start + t + 1, kvh = h / (a.NumHeads / a.NumKvHeads), kvDim = a.NumKvHeads * hd;
        int begin = s * a.SplitLen, end = XMath.Min(len, begin + a.SplitLen);
        long qRow = ((long)t * a.NumHeads + h) * hd;
        var qv = new float[MaxHeadDim / 32];
        var qf = new float[MaxHeadDim / 32];
        var acc = new float[MaxHeadDim / 32];
        for (int i = 0; i < MaxHeadDim / 32; i++)
        {
            int d = lane + 32 * i;
            qv[i] = d < hd ? q[qRow + d] : 0f;
            qf[i] = d < hd && a.Window > 0 ? qFar[qRow + d] : 0f;
            acc[i] = 0f;
        }
        float m = float.NegativeInfinity, l = 0f;
        int lastFar = a.Window > 0 ? start + t - a.Window : -1;   // keys 0 .. lastFar are far (none without a remap)
        for (int p = begin + warp; p < end; p += Warps)
        {
            long row = (long)p * kvDim + kvh * hd;
            float dot = 0f;
            if (p <= lastFar)
            {
                for (int i = 0; i < MaxHeadDim / 32; i++)
                {
                    int d = lane + 32 * i;
                    if (d < hd) dot += qf[i] * default(TE).Load(kfar[row + d]);
                }
            }
            else
            {
                for (int i = 0; i < MaxHeadDim / 32; i++)
                {
                    int d = lane + 32 * i;
                    if (d < hd) dot += qv[i] * default(TE).Load(kcache[row + d]);
                }
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

    /// <summary>Most splits Combine merges (its shared array of split weights).</summary>
    public const int MaxCombineSplits = 4096;

    /// <summary>Threads of a Combine group.</summary>
    public const int CombineGroupSize = 256;

    /// <summary>
    /// Grid (numHeads, T), CombineGroupSize threads (fewer on a small accelerator, at least headDim): dst = sum_s acc_s
    /// exp(m_s - M) / sum_s l_s exp(m_s - M) over the splits (empty splits, l = 0 and m = -inf, weigh nothing). The
    /// threads take the splits side by side: the max and the weights one split a thread, then each output dim's sum in
    /// Group.DimX / headDim slices of the splits with four loads in flight, the slices added at the end.
    /// </summary>
    public static void Combine(ArrayView<float> partial, ArrayView<float> dst, int numHeads, int headDim, int splits)
    {
        var weight = SharedMemory.Allocate<float>(MaxCombineSplits);
        var scratch = SharedMemory.Allocate<float>(32);
        var slices = SharedMemory.Allocate<float>(CombineGroupSize);
        int h = Grid.IdxX, t = Grid.IdxY, stride = headDim + 2, tid = Group.IdxX, n = Group.DimX;
        long first = ((long)t * numHeads + h) * splits * stride;
        float m = float.NegativeInfinity;
        for (int s = tid; s < splits; s += n) m = Reduce.MaxNaN(partial[first + s * stride], m);
        float mAll = Reduce.GroupMaxNaN(m, scratch);
        float l = 0f;
        for (int s = tid; s < splits; s += n)
        {
            float ms = partial[first + s * stride], ls = partial[first + s * stride + 1];
            float f = ls == 0f && ms == float.NegativeInfinity ? 0f : XMath.Exp(ms - mAll);
            weight[s] = f;
            l += ls * f;
        }
        float lAll = Reduce.GroupSum(l, scratch);   // its barriers also publish the weights
        int per = n / headDim, d = tid % headDim, slice = tid / headDim;
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
        if (slice < per)
        {
            long col = first + 2 + d;
            int s = slice;
            for (; s + 3 * per < splits; s += 4 * per)
            {
                a0 += partial[col + (long)s * stride] * weight[s];
                a1 += partial[col + (long)(s + per) * stride] * weight[s + per];
                a2 += partial[col + (long)(s + 2 * per) * stride] * weight[s + 2 * per];
                a3 += partial[col + (long)(s + 3 * per) * stride] * weight[s + 3 * per];
            }
            for (; s < splits; s += per) a0 += partial[col + (long)s * stride] * weight[s];
        }
        slices[tid] = (a0 + a1) + (a2 + a3);
        Group.Barrier();
        if (tid < headDim)
        {
            float sum = 0f;
            for (int k = 0; k < per; k++) sum += slices[k * headDim + tid];
            dst[((long)t * numHeads + h) * headDim + tid] = sum / lAll;
        }
    }
}

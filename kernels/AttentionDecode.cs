// Decode attention (CpuOps.Attention) over a bf16 cache, for few queries and long contexts: one group of W warps per
// (KV head, query, key split), W = Group.DimX / 32 (4, or more for a short context: GpuKernels.DecodeWarpsFor). A
// key's row is read by P = headDim / 8 lanes, 16 bytes (8 dims) each, so a warp takes 32 / P keys a step and the
// loads of the next step are in flight while this one is computed. Every query head of the KV head's group (G of
// them, a compile-time 1, 2, 4 or 8) keeps its 8 query dims, its running max and sum and its 8 output dims in
// registers: one read of the cache serves all G heads (GQA). Scores are reduced over the P lanes by shuffles; the
// online softmax rescales per key. The key slots of a warp, then the W warps, are merged at the end (shuffles, then
// shared memory), and the group writes dst (one split) or (m, l, acc) for AttentionKernels.Combine. With an index
// remap the first splits take the far keys (far queries against the grouped keys), the rest the window. Head dims
// 64, 128 or 256. Exercised by the decode cases of tests/GpuOpsTests.cs (4 and 8 warps on the CPU accelerator).
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

    // The head's 8 query dims of this lane (dims 8 (lane % P) ..), pre-multiplied by the softmax scale and log2(e):
    // the kernel's scores, maxima and weights are in the exp2 domain (one ex2 each), and its partial maxima go out
    // in the natural one.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadQuery(ref HeadState h, ArrayView<F4> q4, long first, float softmaxScale)
    {
        float scale = softmaxScale * Log2E;
        F4 a = q4[first], b = q4[first + 1];
        h.Q0 = a.X * scale;
        h.Q1 = a.Y * scale;
        h.Q2 = a.Z * scale;
        h.Q3 = a.W * scale;
        h.Q4 = b.X * scale;
        h.Q5 = b.Y * scale;
        h.Q6 = b.Z * scale;
        h.Q7 = b.W * scale;
        h.M = float.NegativeInfinity;
        h.L = 0f;
        h.A0 = h.A1 = h.A2 = h.A3 = h.A4 = h.A5 = h.A6 = h.A7 = 0f;
    }

    // One key: the score reduced over the key's P lanes (every lane takes part), then, when the key is inside the
    // split, the online-softmax update of the lane's 8 output dims with the value row v.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(ref HeadState h, in U4 k, in U4 v, int lanesPerKey, bool valid, int roundP)
    {
        float dot = h.Q0 * Bf16.Lo(k.X) + h.Q1 * Bf16.Hi(k.X) + h.Q2 * Bf16.Lo(k.Y) + h.Q3 * Bf16.Hi(k.Y)
                  + h.Q4 * Bf16.Lo(k.Z) + h.Q5 * Bf16.Hi(k.Z) + h.Q6 * Bf16.Lo(k.W) + h.Q7 * Bf16.Hi(k.W);
        // Over the key's lanes (hd / 8 of them: 8, 16 or 32), written out: ILGPU keeps loops.
        if (lanesPerKey > 16) dot += Warp.ShuffleXor(dot, 16);
        if (lanesPerKey > 8) dot += Warp.ShuffleXor(dot, 8);
        dot += Warp.ShuffleXor(dot, 4);
        dot += Warp.ShuffleXor(dot, 2);
        dot += Warp.ShuffleXor(dot, 1);
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
    private static void StepAll<TG>(ref HeadStates s, in U4 k, in U4 v, int lanesPerKey, bool valid, int roundP) where TG : struct, IQueryGroup
    {
        int n = default(TG).Heads;
        Step(ref s.H0, k, v, lanesPerKey, valid, roundP);
        if (n > 1) Step(ref s.H1, k, v, lanesPerKey, valid, roundP);
        if (n > 2)
        {
            Step(ref s.H2, k, v, lanesPerKey, valid, roundP);
            Step(ref s.H3, k, v, lanesPerKey, valid, roundP);
        }
        if (n > 4)
        {
            Step(ref s.H4, k, v, lanesPerKey, valid, roundP);
            Step(ref s.H5, k, v, lanesPerKey, valid, roundP);
            Step(ref s.H6, k, v, lanesPerKey, valid, roundP);
            Step(ref s.H7, k, v, lanesPerKey, valid, roundP);
        }
    }

    // kernels

    /// <summary>
    /// Grid (numKvHeads, T, splits), 128 threads, SharedFloats(TG.Heads, headDim) floats of dynamic shared memory.
    /// q [T, numHeads * headDim] as F4; kcache, vcache the layer's rows as U4 (kvDim % 8 == 0); the group's query
    /// heads kvh * G .. (kvh + 1) * G - 1 with G = numHeads / numKvHeads &lt;= TG.Heads; partial as AttentionKernels.Split.
    /// </summary>
    public static void Decode<TG>(ArrayView<F4> q, ArrayView<U4> kcache, ArrayView<U4> vcache, ArrayView<float> dst,
        ArrayView<float> partial, ArrayView<F4> qFar, ArrayView<U4> kfar, ArrayView<int> step, AttentionArgs a)
        where TG : struct, IQueryGroup
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
        int begin = lo + local * a.SplitLen, end = XMath.Min(hi, begin + a.SplitLen);
        if (far)
        {
            q = qFar;
            kcache = kfar;
        }
        long qRow = ((long)t * a.NumHeads + (long)kvh * group) * hd / 4 + 2 * dims;   // F4 index of head 0, dims 8 dims
        var st = default(HeadStates);
        LoadQuery(ref st.H0, q, qRow, a.Scale);
        if (heads > 1 && group > 1) LoadQuery(ref st.H1, q, qRow + hd / 4, a.Scale);
        if (heads > 2)
        {
            if (group > 2) LoadQuery(ref st.H2, q, qRow + 2 * hd / 4, a.Scale);
            if (group > 3) LoadQuery(ref st.H3, q, qRow + 3 * hd / 4, a.Scale);
        }
        if (heads > 4)
        {
            if (group > 4) LoadQuery(ref st.H4, q, qRow + 4 * hd / 4, a.Scale);
            if (group > 5) LoadQuery(ref st.H5, q, qRow + 5 * hd / 4, a.Scale);
            if (group > 6) LoadQuery(ref st.H6, q, qRow + 6 * hd / 4, a.Scale);
            if (group > 7) LoadQuery(ref st.H7, q, qRow + 7 * hd / 4, a.Scale);
        }

        // Keys of this lane: first + i * stride; the loads of key i + 1 are issued before key i is used.
        int warps = Group.DimX >> 5, kvDim4 = a.NumKvHeads * hd / 8, stride = warps * keysPerStep;
        long col = (long)kvh * hd / 8 + dims;
        int key = begin + warp * keysPerStep + slot;
        U4 k = key < end ? kcache[(long)key * kvDim4 + col] : default;
        U4 v = key < end ? vcache[(long)key * kvDim4 + col] : default;
        for (int first = begin + warp * keysPerStep; first < end; first += stride)   // warp-uniform: every lane shuffles
        {
            int next = key + stride;
            U4 kn = next < end ? kcache[(long)next * kvDim4 + col] : default;
            U4 vn = next < end ? vcache[(long)next * kvDim4 + col] : default;
            StepAll<TG>(ref st, k, v, lanesPerKey, key < end, a.RoundP);
            key = next;
            k = kn;
            v = vn;
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

// CPU causal grouped-query attention over the KV cache, one work item per (kv head, 4 tokens), multi-threaded.
// Numerics as transformers' eager path in f32: score = (q . k) * 1/sqrt(headDim), softmax with the max subtracted,
// f32 exp and f32 (vectorized) sum, probabilities p = e * (1/sum), out = sum_s p_s v_s. A bf16/f16 compute type follows
// torch's CPU flash kernel instead: online softmax over blocks of 512 keys, e = exp(s - running max) rounded to that type
// before it weights V (f32 accumulation), the f32 sum of the unrounded e, out = acc / sum. Test: CpuOpsTests.Attention*,
// CpuOpsBf16Tests.Attention*.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Shape of one Attention call: q and dst [Tokens, Heads*HeadDim], query t at position StartPos+t.</summary>
public readonly record struct AttentionParams(int Tokens, int Heads, int KvHeads, int HeadDim, int StartPos);

public static unsafe partial class CpuOps
{
    [ThreadStatic] private static float[]? _scoreScratch;

    /// <summary>dst[t, h] = softmax(q[t, h] . K[0..StartPos+t, h / (Heads/KvHeads)]^T / sqrt(HeadDim)) . V over the layer's kCache, vCache [maxSeq, kvDim].</summary>
    public static void Attention(float* q, float* kCache, float* vCache, float* dst, AttentionParams p, DType compute = DType.F32)
    {
        if (p.Tokens <= 0 || p.Heads <= 0) return;
        float scale = (float)(1.0 / Math.Sqrt(p.HeadDim));
        nint qp = (nint)q, kc = (nint)kCache, vc = (nint)vCache, dp = (nint)dst;
        // A work item is one kv head and up to 4 consecutive tokens: its 4*group queries share every K and V row
        // load, which keeps long-context prefill from streaming the cache once per query.
        const int TokenBlock = 4;
        int tokenBlocks = (p.Tokens + TokenBlock - 1) / TokenBlock, items = p.KvHeads * tokenBlocks;
        void Item(int item)
        {
            // Later tokens cost more, so hand them out first for a better balance.
            int rev = items - 1 - item;
            AttentionBlock((float*)qp, (float*)kc, (float*)vc, (float*)dp, p, rev % p.KvHeads, rev / p.KvHeads * TokenBlock, scale, compute);
        }
        long work = (long)p.Tokens * p.Heads * (p.StartPos + p.Tokens) * p.HeadDim;
        if (work < 16384)
        {
            for (int i = 0; i < items; i++) Item(i);
        }
        else
        {
            CpuParallel.For(items, Item);
        }
    }

    // Queries of kv head kvh at tokens t0..t0+3 (all heads of its group) against cache rows 0..StartPos+t.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AttentionBlock(float* q, float* kCache, float* vCache, float* dst, AttentionParams p, int kvh, int t0, float scale, DType compute)
    {
        int hd = p.HeadDim, qDim = p.Heads * hd, kvDim = p.KvHeads * hd, group = p.Heads / p.KvHeads;
        int nt = Math.Min(4, p.Tokens - t0), nq = nt * group, lenMax = p.StartPos + t0 + nt;
        var scratch = _scoreScratch;
        if (scratch is null || scratch.Length < nq * (lenMax + hd))
            _scoreScratch = scratch = new float[Math.Max(nq * (lenMax + hd), 4096)];
        fixed (float* sp = scratch)
        {
            float* acc = sp + nq * lenMax;   // [nq, hd]; scores are [nq, lenMax], query r = ti * group + g
            float* kh = kCache + kvh * hd;
            float* vh = vCache + kvh * hd;
            nint* qr = stackalloc nint[nq];
            for (int r = 0; r < nq; r++) qr[r] = (nint)(q + (nint)(t0 + r / group) * qDim + (kvh * group + r % group) * hd);
            // Scores: each K row is loaded once for all queries of the block that can see it, four dot products at a time.
            for (int s = 0; s < lenMax; s++)
            {
                float* kr = kh + (nint)s * kvDim;
                int r = Math.Max(0, s - p.StartPos - t0) * group;
                for (; r + 4 <= nq; r += 4)
                {
                    var d = Dot4((float*)qr[r], (float*)qr[r + 1], (float*)qr[r + 2], (float*)qr[r + 3], kr, hd) * scale;
                    sp[(nint)r * lenMax + s] = d.GetElement(0);
                    sp[(nint)(r + 1) * lenMax + s] = d.GetElement(1);
                    sp[(nint)(r + 2) * lenMax + s] = d.GetElement(2);
                    sp[(nint)(r + 3) * lenMax + s] = d.GetElement(3);
                }
                for (; r < nq; r++) sp[(nint)r * lenMax + s] = Dot((float*)qr[r], kr, hd) * scale;
            }
            new Span<float>(acc, nq * hd).Clear();
            if (compute != DType.F32)
            {
                for (int r = 0; r < nq; r++)
                    RoundedSoftmaxValues(sp + (nint)r * lenMax, p.StartPos + t0 + r / group + 1, vh, acc + r * hd, hd, kvDim, compute);
            }
            else
            {
                SoftmaxValues(sp, acc, vh, p, nq, lenMax, t0, group, hd, kvDim);
            }
            for (int ti = 0; ti < nt; ti++)
                new ReadOnlySpan<float>(acc + ti * group * hd, group * hd).CopyTo(new Span<float>(dst + (nint)(t0 + ti) * qDim + kvh * group * hd, group * hd));
        }
    }

    // Scores [nq, lenMax] to probabilities in place, then acc [nq, hd] += probabilities times V.
    private static void SoftmaxValues(float* sp, float* acc, float* vh, AttentionParams p, int nq, int lenMax, int t0, int group, int hd, int kvDim)
    {
        for (int r = 0; r < nq; r++)
        {
            var scores = new Span<float>(sp + (nint)r * lenMax, p.StartPos + t0 + r / group + 1);
            float max = TensorPrimitives.Max(scores);
            TensorPrimitives.Subtract(scores, max, scores);
            TensorPrimitives.Exp(scores, scores);
            float inv = 1f / TensorPrimitives.Sum(scores);
            TensorPrimitives.Multiply(scores, inv, scores);
        }
        // Values, in tiles of 64 rows that stay in L1 while every query of the block accumulates over them.
        const int ValueTile = 64;
        for (int s0 = 0; s0 < lenMax; s0 += ValueTile)
        {
            for (int r = Math.Max(0, s0 - p.StartPos - t0) * group; r < nq; r++)
            {
                int end = Math.Min(s0 + ValueTile, p.StartPos + t0 + r / group + 1);
                AccumulateWeighted(sp + (nint)r * lenMax, vh, acc + r * hd, s0, end, hd, kvDim);
            }
        }
    }

    // One query's scaled scores [len] (overwritten) to acc [hd] as torch's CPU flash kernel computes in a reduced type:
    // per block of 512 keys, m = max(running max, block max), e = exp(s - m) in f32, sum = sum(e) + exp(m_old - m) * sum,
    // acc = acc * exp(m_old - m) + round(e) . V; finally acc / sum.
    private static void RoundedSoftmaxValues(float* scores, int len, float* vh, float* acc, int hd, int kvDim, DType compute)
    {
        const int KvSplit = 512;
        float runMax = float.NegativeInfinity, runSum = 0;
        var accRow = new Span<float>(acc, hd);
        for (int n = 0; n < len; n += KvSplit)
        {
            int end = Math.Min(n + KvSplit, len);
            var block = new Span<float>(scores + n, end - n);
            float max = MathF.Max(runMax, TensorPrimitives.Max(block));
            TensorPrimitives.Subtract(block, max, block);
            TensorPrimitives.Exp(block, block);
            float rescale = MathF.Exp(runMax - max);
            runSum = TensorPrimitives.Sum(block) + rescale * runSum;
            runMax = max;
            if (n > 0) TensorPrimitives.Multiply(accRow, rescale, accRow);
            Round(block, compute);
            AccumulateWeighted(scores, vh, acc, n, end, hd, kvDim);
        }
        TensorPrimitives.Multiply(accRow, 1f / runSum, accRow);
    }

    // Four queries against one key: one accumulator each, combined by a horizontal-add tree.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Dot4(float* q0, float* q1, float* q2, float* q3, float* k, int n)
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var kv = Vector256.Load(k + i);
            a0 = Vector256.MultiplyAddEstimate(kv, Vector256.Load(q0 + i), a0);
            a1 = Vector256.MultiplyAddEstimate(kv, Vector256.Load(q1 + i), a1);
            a2 = Vector256.MultiplyAddEstimate(kv, Vector256.Load(q2 + i), a2);
            a3 = Vector256.MultiplyAddEstimate(kv, Vector256.Load(q3 + i), a3);
        }
        Vector128<float> sum;
        if (Avx.IsSupported)
        {
            var t = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
            sum = t.GetLower() + t.GetUpper();
        }
        else
        {
            sum = Vector128.Create(Vector256.Sum(a0), Vector256.Sum(a1), Vector256.Sum(a2), Vector256.Sum(a3));
        }
        for (; i < n; i++) sum += Vector128.Create(q0[i], q1[i], q2[i], q3[i]) * k[i];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* x, float* y, int n)
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            a0 = Vector256.MultiplyAddEstimate(Vector256.Load(x + i), Vector256.Load(y + i), a0);
            a1 = Vector256.MultiplyAddEstimate(Vector256.Load(x + i + 8), Vector256.Load(y + i + 8), a1);
        }
        for (; i <= n - 8; i += 8) a0 = Vector256.MultiplyAddEstimate(Vector256.Load(x + i), Vector256.Load(y + i), a0);
        float s = Vector256.Sum(a0 + a1);
        for (; i < n; i++) s += x[i] * y[i];
        return s;
    }

    // output[c] += sum over s in [sStart, sEnd) of w[s] * v[s * stride + c], in registers 32 (then 8) columns at a time.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateWeighted(float* w, float* v, float* output, int sStart, int sEnd, int hd, int stride)
    {
        int c = 0;
        for (; c + 32 <= hd; c += 32)
        {
            var a0 = Vector256.Load(output + c);
            var a1 = Vector256.Load(output + c + 8);
            var a2 = Vector256.Load(output + c + 16);
            var a3 = Vector256.Load(output + c + 24);
            float* vc = v + (nint)sStart * stride + c;
            for (int s = sStart; s < sEnd; s++, vc += stride)
            {
                var ws = Vector256.Create(w[s]);
                a0 = Vector256.MultiplyAddEstimate(ws, Vector256.Load(vc), a0);
                a1 = Vector256.MultiplyAddEstimate(ws, Vector256.Load(vc + 8), a1);
                a2 = Vector256.MultiplyAddEstimate(ws, Vector256.Load(vc + 16), a2);
                a3 = Vector256.MultiplyAddEstimate(ws, Vector256.Load(vc + 24), a3);
            }
            a0.Store(output + c);
            a1.Store(output + c + 8);
            a2.Store(output + c + 16);
            a3.Store(output + c + 24);
        }
        for (; c + 8 <= hd; c += 8)
        {
            var a0 = Vector256.Load(output + c);
            float* vc = v + (nint)sStart * stride + c;
            for (int s = sStart; s < sEnd; s++, vc += stride) a0 = Vector256.MultiplyAddEstimate(Vector256.Create(w[s]), Vector256.Load(vc), a0);
            a0.Store(output + c);
        }
        for (; c < hd; c++)
        {
            float a = output[c];
            for (int s = sStart; s < sEnd; s++) a += w[s] * v[(nint)s * stride + c];
            output[c] = a;
        }
    }
}

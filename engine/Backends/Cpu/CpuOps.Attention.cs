// CPU causal grouped-query attention over the KV cache, one work item per (kv head, 4 tokens), multi-threaded.
// Numerics as transformers' eager path in f32: score = (q . k) * 1/sqrt(headDim), softmax with the max subtracted,
// f32 exp and f32 (vectorized) sum, probabilities p = e * (1/sum), out = sum_s p_s v_s. Test: CpuOpsTests.Attention*.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace LlamaRun.Backends.Cpu;

/// <summary>Shape of one Attention call: q and dst [Tokens, Heads*HeadDim], query t at position StartPos+t.</summary>
public readonly record struct AttentionParams(int Tokens, int Heads, int KvHeads, int HeadDim, int StartPos);

public static unsafe partial class CpuOps
{
    [ThreadStatic] private static float[]? _scoreScratch;

    /// <summary>dst[t, h] = softmax(q[t, h] . K[0..StartPos+t, h / (Heads/KvHeads)]^T / sqrt(HeadDim)) . V over the layer's kCache, vCache [maxSeq, kvDim].</summary>
    public static void Attention(float* q, float* kCache, float* vCache, float* dst, AttentionParams p)
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
            AttentionBlock((float*)qp, (float*)kc, (float*)vc, (float*)dp, p, rev % p.KvHeads, rev / p.KvHeads * TokenBlock, scale);
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
    private static void AttentionBlock(float* q, float* kCache, float* vCache, float* dst, AttentionParams p, int kvh, int t0, float scale)
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
            float* q0 = q + (nint)t0 * qDim + kvh * group * hd;
            for (int s = 0; s < lenMax; s++)
            {
                float* kr = kh + (nint)s * kvDim;
                for (int ti = Math.Max(0, s - p.StartPos - t0); ti < nt; ti++)
                {
                    float* qt = q0 + (nint)ti * qDim;
                    float* st = sp + (nint)ti * group * lenMax + s;
                    for (int g = 0; g < group; g++) st[(nint)g * lenMax] = Dot(qt + g * hd, kr, hd) * scale;
                }
            }
            for (int r = 0; r < nq; r++)
            {
                var scores = new Span<float>(sp + (nint)r * lenMax, p.StartPos + t0 + r / group + 1);
                float max = TensorPrimitives.Max(scores);
                TensorPrimitives.Subtract(scores, max, scores);
                TensorPrimitives.Exp(scores, scores);
                float inv = 1f / TensorPrimitives.Sum(scores);
                TensorPrimitives.Multiply(scores, inv, scores);
            }
            for (int r = 0; r < nq; r++)
                WeightedSum(sp + (nint)r * lenMax, vh, acc + r * hd, p.StartPos + t0 + r / group + 1, hd, kvDim);
            for (int ti = 0; ti < nt; ti++)
                new ReadOnlySpan<float>(acc + ti * group * hd, group * hd).CopyTo(new Span<float>(dst + (nint)(t0 + ti) * qDim + kvh * group * hd, group * hd));
        }
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

    // out[c] = sum over s < len of w[s] * v[s * stride + c], accumulated in registers 32 (then 8) columns at a time.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WeightedSum(float* w, float* v, float* output, int len, int hd, int stride)
    {
        int c = 0;
        for (; c + 32 <= hd; c += 32)
        {
            var a0 = Vector256<float>.Zero;
            var a1 = Vector256<float>.Zero;
            var a2 = Vector256<float>.Zero;
            var a3 = Vector256<float>.Zero;
            float* vc = v + c;
            for (int s = 0; s < len; s++, vc += stride)
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
            var a0 = Vector256<float>.Zero;
            float* vc = v + c;
            for (int s = 0; s < len; s++, vc += stride) a0 = Vector256.MultiplyAddEstimate(Vector256.Create(w[s]), Vector256.Load(vc), a0);
            a0.Store(output + c);
        }
        for (; c < hd; c++)
        {
            float a = 0;
            for (int s = 0; s < len; s++) a += w[s] * v[(nint)s * stride + c];
            output[c] = a;
        }
    }
}

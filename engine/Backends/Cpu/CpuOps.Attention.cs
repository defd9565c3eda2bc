// CPU causal grouped-query attention over the KV cache, one work item per (token, head), multi-threaded.
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
        int hd = p.HeadDim, qDim = p.Heads * hd, kvDim = p.KvHeads * hd, group = p.Heads / p.KvHeads;
        float scale = (float)(1.0 / Math.Sqrt(hd));
        nint qp = (nint)q, kc = (nint)kCache, vc = (nint)vCache, dp = (nint)dst;
        int items = p.Tokens * p.Heads;
        void Item(int item)
        {
            // Later tokens cost more, so hand them out first for a better balance.
            int rev = items - 1 - item, t = rev / p.Heads, h = rev % p.Heads;
            int len = p.StartPos + t + 1;
            var scratch = _scoreScratch;
            if (scratch is null || scratch.Length < len + hd) _scoreScratch = scratch = new float[Math.Max(len + hd, 4096)];
            fixed (float* sp = scratch)
            {
                float* qh = (float*)qp + (nint)t * qDim + h * hd;
                float* kh = (float*)kc + (h / group) * hd;
                float* vh = (float*)vc + (h / group) * hd;
                float* acc = sp + len;
                for (int s = 0; s < len; s++) sp[s] = Dot(qh, kh + (nint)s * kvDim, hd) * scale;
                var scores = new Span<float>(sp, len);
                float max = TensorPrimitives.Max(scores);
                TensorPrimitives.Subtract(scores, max, scores);
                TensorPrimitives.Exp(scores, scores);
                float inv = 1f / TensorPrimitives.Sum(scores);
                TensorPrimitives.Multiply(scores, inv, scores);
                new Span<float>(acc, hd).Clear();
                for (int s = 0; s < len; s++) Axpy(sp[s], vh + (nint)s * kvDim, acc, hd);
                new ReadOnlySpan<float>(acc, hd).CopyTo(new Span<float>((float*)dp + (nint)t * qDim + h * hd, hd));
            }
        }
        long work = (long)items * (p.StartPos + p.Tokens) * hd;
        if (work < 16384)
        {
            for (int i = 0; i < items; i++) Item(i);
        }
        else
        {
            CpuParallel.For(items, Item);
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

    // acc += a * x
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy(float a, float* x, float* acc, int n)
    {
        var va = Vector256.Create(a);
        int i = 0;
        for (; i <= n - 8; i += 8)
            Vector256.MultiplyAddEstimate(va, Vector256.Load(x + i), Vector256.Load(acc + i)).Store(acc + i);
        for (; i < n; i++) acc[i] += a * x[i];
    }
}

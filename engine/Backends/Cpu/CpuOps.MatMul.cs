// CPU matmul dst[T, out] = x[T, in] . weight[out, in]^T for F32, F16 and BF16 weights, f32 accumulation.
// Decode (T < 4) streams each weight row once with 4 independent FMA accumulators (memory-bound; BF16 and F16 via pair-split x);
// prefill takes 4 tokens per weight-row pass so the row is loaded once per 4 tokens. One token goes through
// CpuParallel.ForOutputs, so a worker descheduled by other load never stalls the GEMV. Test: CpuOpsTests.MatMul*.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    [ThreadStatic] private static float[]? _pairScratch;

    /// <summary>
    /// dst[t, j] = silu(x[t] . gateUp[j]) * (x[t] . gateUp[ff + j]): MatMul into scratch [tokens, 2 ff], then SwiGlu of
    /// its gate and up halves (f32).
    /// </summary>
    public static void MatMulSwiGlu(float* x, void* gateUp, float* dst, float* scratch, DType weightType, int tokens, int inDim, int ff)
    {
        MatMul(x, gateUp, scratch, weightType, tokens, inDim, 2 * ff);
        for (int t = 0; t < tokens; t++)
            SwiGlu(scratch + (long)t * 2 * ff, scratch + (long)t * 2 * ff + ff, dst + (long)t * ff, ff);
    }

    /// <summary>dst[t, o] = sum_i x[t, i] * weight[o, i] for t below tokens, o below outDim; multi-threaded.</summary>
    public static void MatMul(float* x, void* weight, float* dst, DType weightType, int tokens, int inDim, int outDim)
    {
        if (tokens <= 0 || outDim <= 0) return;
        if (inDim <= 0)
        {
            new Span<float>(dst, checked(tokens * outDim)).Clear();
            return;
        }
        int wSize = weightType.Size();
        // Rows per work item: about 64 KiB of weights (stays in L2 while its token chunk streams past),
        // but small enough that every thread gets several items at decode.
        int rowChunk = Math.Clamp(65536 / (inDim * wSize), 4, 256);
        rowChunk = Math.Min(rowChunk, Math.Max(4, outDim / (CpuParallel.Threads * (tokens == 1 ? GemvItemsPerThread : 8))));
        int rowChunks = (outDim + rowChunk - 1) / rowChunk;
        int tokenChunk = tokens <= 64 ? tokens : 64;
        int tokenChunks = (tokens + tokenChunk - 1) / tokenChunk;
        int items = rowChunks * tokenChunks;
        // Decode with BF16 or F16 weights: x is stored pair-split once (see SplitPairs) so each 32-byte weight load
        // becomes two f32 vectors with a shift and a mask (BF16; F16 adds a shift and a multiply), the fewest
        // instructions per weight byte.
        bool pairs = weightType != DType.F32 && tokens < 4;
        float[]? split = null;
        if (pairs)
        {
            split = _pairScratch;
            if (split is null || split.Length < tokens * inDim)
            {
                CpuParallel.WaitForWorkers();   // a straggling worker may still read the old (pinned) scratch
                _pairScratch = split = GC.AllocateUninitializedArray<float>(Math.Max(tokens * inDim, 1024), pinned: true);
            }
        }
        fixed (float* sp = split)
        {
            if (pairs)
                for (int t = 0; t < tokens; t++) SplitPairs(x + (nint)t * inDim, sp + (nint)t * inDim, inDim);
            nint xp = pairs ? (nint)sp : (nint)x, wp = (nint)weight, dp = (nint)dst;
            var shape = new MatMulChunks(tokens, inDim, outDim, rowChunk, rowChunks, tokenChunk);
            if (tokens == 1)
            {
                // One token: item i fills dst[i * rowChunk, ...), so the pool may redo an item a stalled worker holds.
                void Rows(int item, float* output) =>
                    MatMulRows((float*)xp, (byte*)wp, output, weightType, pairs, shape, item * rowChunk);
                if ((long)inDim * outDim < SerialGemvWeights)
                    for (int i = 0; i < items; i++) Rows(i, dst + (nint)i * rowChunk);
                else
                    CpuParallel.ForOutputs(items, rowChunk, outDim, dst, Rows);
                return;
            }
            void Item(int item) => MatMulItem((float*)xp, (byte*)wp, (float*)dp, weightType, pairs, shape, item);
            if (items == 1 || (long)tokens * inDim * outDim < 32768)
            {
                for (int i = 0; i < items; i++) Item(i);
            }
            else
            {
                CpuParallel.For(items, Item);
            }
        }
    }

    // Below this many weights a one-token GEMV runs on the calling thread alone (cheaper than waking the pool).
    private const long SerialGemvWeights = 32768;
    // Items per thread for one token: small items (~36 KiB of a 768-wide BF16 matrix) keep the redo of a stalled item cheap.
    private const int GemvItemsPerThread = 16;

    // Rows [r0, r0 + RowChunk) of the weight times the single token x, written to output[0, rows).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MatMulRows(float* x, byte* w, float* output, DType weightType, bool pairs, MatMulChunks c, int r0)
    {
        int inDim = c.InDim, rows = Math.Min(c.RowChunk, c.OutDim - r0);
        byte* ws = w + (nint)r0 * inDim * weightType.Size();
        if (pairs)
        {
            for (int r = 0; r < rows; r++) output[r] = DotPairs(weightType, (ushort*)ws + (nint)r * inDim, x, inDim);
            return;
        }
        switch (weightType)
        {
            case DType.F32: MatMulBlock<F32Row>(x, ws, output, 1, rows, inDim, c.OutDim); break;
            case DType.BF16: MatMulBlock<Bf16Row>(x, ws, output, 1, rows, inDim, c.OutDim); break;
            default: MatMulBlock<F16Row>(x, ws, output, 1, rows, inDim, c.OutDim); break;
        }
    }

    private readonly record struct MatMulChunks(int Tokens, int InDim, int OutDim, int RowChunk, int RowChunks, int TokenChunk);

    // Work item: rows [r0, r0 + RowChunk) of the weight times tokens [t0, t0 + TokenChunk).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MatMulItem(float* x, byte* w, float* dst, DType weightType, bool pairs, MatMulChunks c, int item)
    {
        int inDim = c.InDim, outDim = c.OutDim;
        int r0 = item % c.RowChunks * c.RowChunk, t0 = item / c.RowChunks * c.TokenChunk;
        int rows = Math.Min(c.RowChunk, outDim - r0), toks = Math.Min(c.TokenChunk, c.Tokens - t0);
        float* xs = x + (nint)t0 * inDim;
        float* ds = dst + (nint)t0 * outDim + r0;
        byte* ws = w + (nint)r0 * inDim * weightType.Size();
        if (pairs)
        {
            for (int t = 0; t < toks; t++)
                for (int r = 0; r < rows; r++)
                    ds[(nint)t * outDim + r] = DotPairs(weightType, (ushort*)ws + (nint)r * inDim, xs + (nint)t * inDim, inDim);
            return;
        }
        switch (weightType)
        {
            case DType.F32: MatMulBlock<F32Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
            case DType.BF16: MatMulBlock<Bf16Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
            default: MatMulBlock<F16Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotPairs(DType weightType, ushort* w, float* x, int n) =>
        weightType == DType.BF16 ? DotRow<Bf16Row>(w, x, n) : DotRow<F16Row>(w, x, n);

    // One row times one operand in the reader's Load16 order (pair-split x for 16-bit rows); 4 accumulators, 32 elements
    // per iteration. An F16 row that held an infinity or NaN is redone with exact conversions (F16Row's fast path is
    // exact for finite values only). Attention uses it for each head's slice of a cached row.
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static float DotRow<TW>(void* w, float* x, int n) where TW : struct, IRowReader
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        var specials = Vector256<ushort>.Zero;
        nint i = 0;
        for (; i <= n - 32; i += 32)
        {
            // 1 KiB ahead: starts the next row (and the next 4 KiB page) before the hardware prefetcher would.
            if (Sse.IsSupported) Sse.Prefetch0((ushort*)w + i + 512);
            TW.Load16(w, i, out var e0, out var o0, ref specials);
            TW.Load16(w, i + 16, out var e1, out var o1, ref specials);
            a0 = Vector256.MultiplyAddEstimate(e0, Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate(o0, Vector256.Load(x + i + 8), a1);
            a2 = Vector256.MultiplyAddEstimate(e1, Vector256.Load(x + i + 16), a2);
            a3 = Vector256.MultiplyAddEstimate(o1, Vector256.Load(x + i + 24), a3);
        }
        for (; i <= n - 16; i += 16)
        {
            TW.Load16(w, i, out var e0, out var o0, ref specials);
            a0 = Vector256.MultiplyAddEstimate(e0, Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate(o0, Vector256.Load(x + i + 8), a1);
        }
        if (typeof(TW) == typeof(F16Row) && F16Row.AnySpecial(specials)) return DotRow<F16ExactRow>(w, x, n);
        float s = Vector256.Sum((a0 + a1) + (a2 + a3));
        for (; i < n; i++) s += TW.Load1(w, i) * x[i];
        return s;
    }

    // x [toks, inDim] (row stride inDim), w [rows, inDim], dst row stride dstStride.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MatMulBlock<TW>(float* x, void* w, float* dst, int toks, int rows, int inDim, int dstStride)
        where TW : struct, IRowReader
    {
        int t = 0;
        nint rowBytes = (nint)inDim * (typeof(TW) == typeof(F32Row) ? 4 : 2);
        for (; t + 4 <= toks; t += 4)
        {
            float* x0 = x + (nint)t * inDim;
            float* d0 = dst + (nint)t * dstStride;
            for (int r = 0; r < rows; r++)
                Dot4<TW>((byte*)w + r * rowBytes, x0, inDim, d0 + r, dstStride);
        }
        for (; t < toks; t++)
        {
            float* xt = x + (nint)t * inDim;
            float* dt = dst + (nint)t * dstStride;
            for (int r = 0; r < rows; r++)
                dt[r] = Dot1<TW>((byte*)w + r * rowBytes, xt, inDim);
        }
    }

    // One weight row times one token: 4 accumulators of 8 lanes hide the FMA latency while streaming the row.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot1<TW>(void* w, float* x, int n) where TW : struct, IRowReader
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        nint i = 0;
        for (; i <= n - 32; i += 32)
        {
            a0 = Vector256.MultiplyAddEstimate(TW.Load8(w, i), Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate(TW.Load8(w, i + 8), Vector256.Load(x + i + 8), a1);
            a2 = Vector256.MultiplyAddEstimate(TW.Load8(w, i + 16), Vector256.Load(x + i + 16), a2);
            a3 = Vector256.MultiplyAddEstimate(TW.Load8(w, i + 24), Vector256.Load(x + i + 24), a3);
        }
        for (; i <= n - 8; i += 8)
            a0 = Vector256.MultiplyAddEstimate(TW.Load8(w, i), Vector256.Load(x + i), a0);
        float s = Vector256.Sum((a0 + a1) + (a2 + a3));
        for (; i < n; i++) s += TW.Load1(w, i) * x[i];
        return s;
    }

    // One weight row times 4 consecutive tokens (row stride n): each weight vector is loaded once for 4 FMAs.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4<TW>(void* w, float* x, int n, float* dst, int dstStride) where TW : struct, IRowReader
    {
        float* x1 = x + n, x2 = x1 + n, x3 = x2 + n;
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        var b0 = Vector256<float>.Zero;
        var b1 = Vector256<float>.Zero;
        var b2 = Vector256<float>.Zero;
        var b3 = Vector256<float>.Zero;
        nint i = 0;
        for (; i <= n - 16; i += 16)
        {
            var wa = TW.Load8(w, i);
            var wb = TW.Load8(w, i + 8);
            a0 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x1 + i), a1);
            a2 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x2 + i), a2);
            a3 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x3 + i), a3);
            b0 = Vector256.MultiplyAddEstimate(wb, Vector256.Load(x + i + 8), b0);
            b1 = Vector256.MultiplyAddEstimate(wb, Vector256.Load(x1 + i + 8), b1);
            b2 = Vector256.MultiplyAddEstimate(wb, Vector256.Load(x2 + i + 8), b2);
            b3 = Vector256.MultiplyAddEstimate(wb, Vector256.Load(x3 + i + 8), b3);
        }
        for (; i <= n - 8; i += 8)
        {
            var wa = TW.Load8(w, i);
            a0 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x1 + i), a1);
            a2 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x2 + i), a2);
            a3 = Vector256.MultiplyAddEstimate(wa, Vector256.Load(x3 + i), a3);
        }
        float s0 = Vector256.Sum(a0 + b0), s1 = Vector256.Sum(a1 + b1);
        float s2 = Vector256.Sum(a2 + b2), s3 = Vector256.Sum(a3 + b3);
        for (; i < n; i++)
        {
            float wi = TW.Load1(w, i);
            s0 += wi * x[i];
            s1 += wi * x1[i];
            s2 += wi * x2[i];
            s3 += wi * x3[i];
        }
        dst[0] = s0;
        dst[dstStride] = s1;
        dst[2 * dstStride] = s2;
        dst[3 * dstStride] = s3;
    }
}

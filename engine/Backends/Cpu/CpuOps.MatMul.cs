// CPU matmul dst[T, out] = x[T, in] . weight[out, in]^T for F32, F16 and BF16 weights, f32 accumulation.
// Decode (T < 4) streams each weight row once with 4 independent FMA accumulators (memory-bound; BF16 via pair-split x);
// prefill takes 4 tokens per weight-row pass so the row is loaded once per 4 tokens. One token goes through
// CpuParallel.ForOutputs, so a worker descheduled by other load never stalls the GEMV. Test: CpuOpsTests.MatMul*.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Reads 8 consecutive weights of one row as f32 (F32 directly, BF16 by a 16-bit shift, F16 by bit moves).</summary>
internal unsafe interface IWeightRow
{
    static abstract Vector256<float> Load8(void* w, nint i);
    static abstract float Load1(void* w, nint i);
}

internal unsafe struct F32Row : IWeightRow
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i) => Vector256.Load((float*)w + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => ((float*)w)[i];
}

internal unsafe struct Bf16Row : IWeightRow
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i)
    {
        if (Avx2.IsSupported)
            return Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)w + i), 16).AsSingle();
        var wide = Vector256.WidenLower(Vector128.Load((ushort*)w + i).ToVector256Unsafe());
        return Vector256.ShiftLeft(wide, 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => DTypes.BF16ToF32(((ushort*)w)[i]);
}

// F16 by integer bit moves (exact for normals, subnormals, zeros, infinities and NaNs): the exponent is rebiased by
// adding 112 << 23; infinities/NaNs get another 112 << 23; subnormals are renormalized by one exact f32 subtraction.
internal unsafe struct F16Row : IWeightRow
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i)
    {
        var h = Avx2.IsSupported
            ? Avx2.ConvertToVector256Int32((ushort*)w + i)
            : Vector256.WidenLower(Vector128.Load((ushort*)w + i).ToVector256Unsafe()).AsInt32();
        var sign = Vector256.ShiftLeft(h & Vector256.Create(0x8000), 16);
        var o = Vector256.ShiftLeft(h & Vector256.Create(0x7fff), 13);
        var exp = o & Vector256.Create(0x0f800000);
        o += Vector256.Create(0x38000000);
        o += Vector256.Equals(exp, Vector256.Create(0x0f800000)) & Vector256.Create(0x38000000);
        var sub = (o + Vector256.Create(0x00800000)).AsSingle() - Vector256.Create(0x38800000).AsSingle();
        var f = Vector256.ConditionalSelect(Vector256.Equals(exp, Vector256<int>.Zero).AsSingle(), sub, o.AsSingle());
        return (f.AsInt32() | sign).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => DTypes.F16ToF32(((ushort*)w)[i]);
}

public static unsafe partial class CpuOps
{
    [ThreadStatic] private static float[]? _pairScratch;

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
        // Decode with BF16 weights: x is stored pair-split once (see SplitPairs) so each 32-byte weight load
        // becomes two f32 vectors with one shift and one mask, the fewest instructions per weight byte.
        bool pairs = weightType == DType.BF16 && tokens < 4;
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
            for (int r = 0; r < rows; r++) output[r] = Dot1Bf16Pairs((ushort*)ws + (nint)r * inDim, x, inDim);
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
                    ds[(nint)t * outDim + r] = Dot1Bf16Pairs((ushort*)ws + (nint)r * inDim, xs + (nint)t * inDim, inDim);
            return;
        }
        switch (weightType)
        {
            case DType.F32: MatMulBlock<F32Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
            case DType.BF16: MatMulBlock<Bf16Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
            default: MatMulBlock<F16Row>(xs, ws, ds, toks, rows, inDim, outDim); break;
        }
    }

    // Within each block of 16, x[2k] goes to slot k and x[2k+1] to slot 8+k, matching the even (low half) and odd
    // (high half) bf16 weights of a 32-byte load viewed as 8 ints; the tail past the last block is copied as is.
    private static void SplitPairs(float* x, float* dst, int n)
    {
        int i = 0;
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < 8; k++)
            {
                dst[i + k] = x[i + 2 * k];
                dst[i + 8 + k] = x[i + 2 * k + 1];
            }
        for (; i < n; i++) dst[i] = x[i];
    }

    // One BF16 weight row times one pair-split token; 4 accumulators, 32 weights (64 bytes) per iteration.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot1Bf16Pairs(ushort* w, float* x, int n)
    {
        var hiMask = Vector256.Create(unchecked((int)0xFFFF0000));
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        nint i = 0;
        for (; i <= n - 32; i += 32)
        {
            // 1 KiB ahead: starts the next row (and the next 4 KiB page) before the hardware prefetcher would.
            if (Sse.IsSupported) Sse.Prefetch0(w + i + 512);
            var p0 = Vector256.Load((int*)(w + i));
            var p1 = Vector256.Load((int*)(w + i + 16));
            a0 = Vector256.MultiplyAddEstimate(Vector256.ShiftLeft(p0, 16).AsSingle(), Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate((p0 & hiMask).AsSingle(), Vector256.Load(x + i + 8), a1);
            a2 = Vector256.MultiplyAddEstimate(Vector256.ShiftLeft(p1, 16).AsSingle(), Vector256.Load(x + i + 16), a2);
            a3 = Vector256.MultiplyAddEstimate((p1 & hiMask).AsSingle(), Vector256.Load(x + i + 24), a3);
        }
        for (; i <= n - 16; i += 16)
        {
            var p0 = Vector256.Load((int*)(w + i));
            a0 = Vector256.MultiplyAddEstimate(Vector256.ShiftLeft(p0, 16).AsSingle(), Vector256.Load(x + i), a0);
            a1 = Vector256.MultiplyAddEstimate((p0 & hiMask).AsSingle(), Vector256.Load(x + i + 8), a1);
        }
        float s = Vector256.Sum((a0 + a1) + (a2 + a3));
        for (; i < n; i++) s += DTypes.BF16ToF32(w[i]) * x[i];
        return s;
    }

    // x [toks, inDim] (row stride inDim), w [rows, inDim], dst row stride dstStride.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MatMulBlock<TW>(float* x, void* w, float* dst, int toks, int rows, int inDim, int dstStride)
        where TW : struct, IWeightRow
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
    private static float Dot1<TW>(void* w, float* x, int n) where TW : struct, IWeightRow
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
    private static void Dot4<TW>(void* w, float* x, int n, float* dst, int dstStride) where TW : struct, IWeightRow
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

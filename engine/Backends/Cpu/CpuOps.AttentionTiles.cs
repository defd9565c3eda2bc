// The inner loops of CPU attention over one tile of cached rows (F32 or BF16, read by an IRowReader). Decode reads K in
// memory order (row by row, each row's heads in turn) and prefetches the tile's V rows into L2 meanwhile, since the
// hardware prefetchers lose track of short runs (a head's slice of a row is 128 to 512 bytes); prefill reads blocks of 8
// rows of one head, eight dot products at once. V is read in blocks of 16 rows per head with the outputs in registers.
// q and the accumulators are in the reader's Load16 order (pair-split for BF16). Test: CpuKvCacheTests, CpuOpsAttentionTests.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    // Decode scores of every head for rows [s0, s0 + tile): scores[r, j] for query head r, row s0 + j.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScoresByRows<TKv>(in AttentionJob job, int s0, int tile, float* qa, float* scores) where TKv : struct, IRowReader
    {
        var p = job.P;
        int hd = p.HeadDim, group = job.Group, kt = job.KeyTile;
        nint size = p.Cache.Size(), rowBytes = job.KvDim * size, sliceBytes = hd * size;
        byte* krow = (byte*)job.K + s0 * rowBytes;
        byte* vpre = (byte*)job.V + s0 * rowBytes;
        for (int j = 0; j < tile; j++, krow += rowBytes)
        {
            for (int kv = 0; kv < p.KvHeads; kv++)
            {
                byte* ks = krow + kv * sliceBytes;
                int r = kv * group, g = 0;
                for (; g + 4 <= group; g += 4, r += 4)
                {
                    var d = DotSlice4<TKv>(qa + r * hd, ks, hd) * job.Scale;
                    scores[r * kt + j] = d.GetElement(0);
                    scores[(r + 1) * kt + j] = d.GetElement(1);
                    scores[(r + 2) * kt + j] = d.GetElement(2);
                    scores[(r + 3) * kt + j] = d.GetElement(3);
                }
                for (; g < group; g++, r++) scores[r * kt + j] = DotRow<TKv>(ks, qa + r * hd, hd) * job.Scale;
            }
            // The V row of the same position, to L2, one line per line of K read.
            if (Sse.IsSupported)
                for (byte* end = vpre + rowBytes; vpre < end; vpre += 64) Sse.Prefetch1(vpre);
        }
    }

    // One pass over the tile [s0, s0 + tile) in blocks of rows, each head's slice of a block for every query of that head
    // that sees rows of it: the K pass (values false) stores scores[r, j] for blocks of 8 rows, eight dot products at
    // once; the V pass (values true) adds e[r, j] * V[s0 + j] to acc[r] for blocks of 16 rows (the slice stays in L1).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockPass<TKv>(in AttentionJob job, in AttentionItem it, int s0, int tile, bool values, float* qa, float* scores, float* acc)
        where TKv : struct, IRowReader
    {
        var p = job.P;
        int hd = p.HeadDim, group = job.Group, perToken = it.KvHeadCount * group, kt = job.KeyTile, step = values ? 16 : 8;
        nint kvDim = job.KvDim, size = p.Cache.Size();
        byte* cache = (byte*)(values ? job.V : job.K);
        for (int j = 0; j < tile; j += step)
            for (int kv = 0; kv < it.KvHeadCount; kv++)
            {
                byte* slice = cache + ((s0 + j) * kvDim + (it.KvHead0 + kv) * hd) * size;
                for (int ti = 0; ti < it.TokenCount; ti++)
                {
                    int rows = Math.Min(step, Visible(p, it, ti, s0, tile) - j);
                    for (int g = 0, r = ti * perToken + kv * group; g < group && rows > 0; g++, r++)
                    {
                        float* sr = scores + r * kt + j;
                        if (values)
                            Accumulate<TKv>(sr, slice, kvDim, rows, acc + r * hd, hd);
                        else if (rows == 8)
                            (Dot8<TKv>(qa + r * hd, slice, kvDim, hd) * job.Scale).Store(sr);
                        else
                            for (int jj = 0; jj < rows; jj++) sr[jj] = DotRow<TKv>(slice + jj * kvDim * size, qa + r * hd, hd) * job.Scale;
                    }
                }
            }
    }

    // [q_g . k] for the four queries q + g * hd of one group and its head slice, which is loaded once for all four.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> DotSlice4<TKv>(float* q, void* k, int hd) where TKv : struct, IRowReader
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        var b0 = Vector256<float>.Zero;
        var b1 = Vector256<float>.Zero;
        var b2 = Vector256<float>.Zero;
        var b3 = Vector256<float>.Zero;
        var none = Vector256<ushort>.Zero;
        float* q1 = q + hd, q2 = q1 + hd, q3 = q2 + hd;
        int i = 0;
        for (; i + 16 <= hd; i += 16)
        {
            TKv.Load16(k, i, out var e, out var o, ref none);
            a0 = Vector256.MultiplyAddEstimate(e, Vector256.Load(q + i), a0);
            b0 = Vector256.MultiplyAddEstimate(o, Vector256.Load(q + i + 8), b0);
            a1 = Vector256.MultiplyAddEstimate(e, Vector256.Load(q1 + i), a1);
            b1 = Vector256.MultiplyAddEstimate(o, Vector256.Load(q1 + i + 8), b1);
            a2 = Vector256.MultiplyAddEstimate(e, Vector256.Load(q2 + i), a2);
            b2 = Vector256.MultiplyAddEstimate(o, Vector256.Load(q2 + i + 8), b2);
            a3 = Vector256.MultiplyAddEstimate(e, Vector256.Load(q3 + i), a3);
            b3 = Vector256.MultiplyAddEstimate(o, Vector256.Load(q3 + i + 8), b3);
        }
        var sum = Sum4(a0 + b0, a1 + b1, a2 + b2, a3 + b3);
        for (; i < hd; i++)
        {
            float ki = TKv.Load1(k, i);
            sum += Vector128.Create(q[i], q1[i], q2[i], q3[i]) * ki;
        }
        return sum;
    }

    // [sum(a0), sum(a1), sum(a2), sum(a3)].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Sum4(Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3)
    {
        if (!Avx.IsSupported) return Vector128.Create(Vector256.Sum(a0), Vector256.Sum(a1), Vector256.Sum(a2), Vector256.Sum(a3));
        var t = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        return t.GetLower() + t.GetUpper();
    }

    // scores[j] = q . row_j for the 8 rows at k + j * stride (elements), j = 0..7.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Dot8<TKv>(float* q, void* k, nint stride, int hd) where TKv : struct, IRowReader
    {
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        var a4 = Vector256<float>.Zero;
        var a5 = Vector256<float>.Zero;
        var a6 = Vector256<float>.Zero;
        var a7 = Vector256<float>.Zero;
        var none = Vector256<ushort>.Zero;
        int i = 0;
        for (; i + 16 <= hd; i += 16)
        {
            var qe = Vector256.Load(q + i);
            var qo = Vector256.Load(q + i + 8);
            TKv.Load16(k, i, out var e, out var o, ref none);
            a0 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a0));
            TKv.Load16(k, stride + i, out e, out o, ref none);
            a1 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a1));
            TKv.Load16(k, 2 * stride + i, out e, out o, ref none);
            a2 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a2));
            TKv.Load16(k, 3 * stride + i, out e, out o, ref none);
            a3 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a3));
            TKv.Load16(k, 4 * stride + i, out e, out o, ref none);
            a4 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a4));
            TKv.Load16(k, 5 * stride + i, out e, out o, ref none);
            a5 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a5));
            TKv.Load16(k, 6 * stride + i, out e, out o, ref none);
            a6 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a6));
            TKv.Load16(k, 7 * stride + i, out e, out o, ref none);
            a7 = Vector256.MultiplyAddEstimate(o, qo, Vector256.MultiplyAddEstimate(e, qe, a7));
        }
        var sum = Sum8(a0, a1, a2, a3, a4, a5, a6, a7);
        if (i < hd)
        {
            Span<float> tail = stackalloc float[8];
            for (int j = 0; j < 8; j++)
            {
                float s = 0;
                for (int c = i; c < hd; c++) s += q[c] * TKv.Load1(k, j * stride + c);
                tail[j] = s;
            }
            sum += Vector256.Create<float>(tail);
        }
        return sum;
    }

    // [sum(a0), ..., sum(a7)]: pairwise horizontal adds, then the two 128-bit halves.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Sum8(Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3,
        Vector256<float> a4, Vector256<float> a5, Vector256<float> a6, Vector256<float> a7)
    {
        if (!Avx.IsSupported)
            return Vector256.Create(Vector256.Sum(a0), Vector256.Sum(a1), Vector256.Sum(a2), Vector256.Sum(a3),
                Vector256.Sum(a4), Vector256.Sum(a5), Vector256.Sum(a6), Vector256.Sum(a7));
        var lo = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));   // [0..3 low halves | 0..3 high]
        var hi = Avx.HorizontalAdd(Avx.HorizontalAdd(a4, a5), Avx.HorizontalAdd(a6, a7));
        return Avx.Permute2x128(lo, hi, 0x20) + Avx.Permute2x128(lo, hi, 0x31);
    }

    // acc[c] += sum over j < n of w[j] * row_j[c], c < hd, rows at v + j * stride (elements); 64 columns in registers.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate<TKv>(float* w, void* v, nint stride, int n, float* acc, int hd) where TKv : struct, IRowReader
    {
        var none = Vector256<ushort>.Zero;
        int c = 0;
        for (; c + 64 <= hd; c += 64)
        {
            var a0 = Vector256.Load(acc + c);
            var a1 = Vector256.Load(acc + c + 8);
            var a2 = Vector256.Load(acc + c + 16);
            var a3 = Vector256.Load(acc + c + 24);
            var a4 = Vector256.Load(acc + c + 32);
            var a5 = Vector256.Load(acc + c + 40);
            var a6 = Vector256.Load(acc + c + 48);
            var a7 = Vector256.Load(acc + c + 56);
            nint o = c;
            for (int j = 0; j < n; j++, o += stride)
            {
                var wj = Vector256.Create(w[j]);
                TKv.Load16(v, o, out var e, out var d, ref none);
                a0 = Vector256.MultiplyAddEstimate(wj, e, a0);
                a1 = Vector256.MultiplyAddEstimate(wj, d, a1);
                TKv.Load16(v, o + 16, out e, out d, ref none);
                a2 = Vector256.MultiplyAddEstimate(wj, e, a2);
                a3 = Vector256.MultiplyAddEstimate(wj, d, a3);
                TKv.Load16(v, o + 32, out e, out d, ref none);
                a4 = Vector256.MultiplyAddEstimate(wj, e, a4);
                a5 = Vector256.MultiplyAddEstimate(wj, d, a5);
                TKv.Load16(v, o + 48, out e, out d, ref none);
                a6 = Vector256.MultiplyAddEstimate(wj, e, a6);
                a7 = Vector256.MultiplyAddEstimate(wj, d, a7);
            }
            a0.Store(acc + c);
            a1.Store(acc + c + 8);
            a2.Store(acc + c + 16);
            a3.Store(acc + c + 24);
            a4.Store(acc + c + 32);
            a5.Store(acc + c + 40);
            a6.Store(acc + c + 48);
            a7.Store(acc + c + 56);
        }
        for (; c + 16 <= hd; c += 16)
        {
            var a0 = Vector256.Load(acc + c);
            var a1 = Vector256.Load(acc + c + 8);
            nint o = c;
            for (int j = 0; j < n; j++, o += stride)
            {
                var wj = Vector256.Create(w[j]);
                TKv.Load16(v, o, out var e, out var d, ref none);
                a0 = Vector256.MultiplyAddEstimate(wj, e, a0);
                a1 = Vector256.MultiplyAddEstimate(wj, d, a1);
            }
            a0.Store(acc + c);
            a1.Store(acc + c + 8);
        }
        for (; c < hd; c++)
        {
            float a = acc[c];
            for (int j = 0; j < n; j++) a += w[j] * TKv.Load1(v, j * stride + c);
            acc[c] = a;
        }
    }
}

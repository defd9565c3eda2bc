// MatMul dst[T, out] = x[T, in] * weight[out, in]^T (CpuOps.MatMul); x and dst are f32.
// GemvBf16: decode (T <= 8 tokens, TT = the compile-time maximum): one warp per output row, the weights read once for
// all tokens in 16-byte loads, eight in flight per lane; needs in % 8 == 0. Gemv: any weight type and shape, 4-byte
// loads. Both: one warp a row, any group size (8 rows a group on a GPU). GemmBf16: prefill on tensor cores (the fallback when cuBLAS is absent):
// 128x128x32 tiles, 8 warps as 2 x 4, each a 64 x 32 tile of 4 x 4 mma.sync fragments; x rounded to bf16 as it is
// staged in shared memory, f32 accumulation. Exercised by the MatMul cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>A compile-time token count (the most tokens one GEMV launch takes).</summary>
public interface ITokens
{
    int Max { get; }
}

public readonly struct OneToken : ITokens
{
    public int Max => 1;
}

public readonly struct UpToEightTokens : ITokens
{
    public int Max => 8;
}

/// <summary>One float accumulator per token of a GEMV (named fields: ILGPU keeps them in registers).</summary>
public struct Sums8
{
    public float S0, S1, S2, S3, S4, S5, S6, S7;
}

public static class MatMulKernels
{
    public const int GemvMaxTokens = 8, GemvRowsPerGroup = 8;
    public const int GemmTile = 128, GemmK = 32;
    private const int GemmRowWords = (GemmK + 8) / 2;   // padded shared row of 40 bf16: conflict-free fragment loads

    /// <summary>Dynamic shared memory of one GemmBf16 group (plus TensorCore.ScratchBytes where the fragments are emulated).</summary>
    public const int GemmSharedBytes = 2 * 2 * GemmTile * GemmRowWords * 4;

    // The dot product of 8 bf16 weights with x4[xk], x4[xk + 1] (8 floats).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot8(in U4 w, ArrayView<F4> x4, long xk)
    {
        F4 a = x4[xk], b = x4[xk + 1];
        return Bf16.Lo(w.X) * a.X + Bf16.Hi(w.X) * a.Y + Bf16.Lo(w.Y) * a.Z + Bf16.Hi(w.Y) * a.W
             + Bf16.Lo(w.Z) * b.X + Bf16.Hi(w.Z) * b.Y + Bf16.Lo(w.W) * b.Z + Bf16.Hi(w.W) * b.W;
    }

    // acc[t] += dot(w, x[t, k .. k + 8)) for every token t < T (at most TT.Max); xk is the F4 index of column k of token 0.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate<TT>(ref Sums8 acc, in U4 w, ArrayView<F4> x4, long xk, int T, int in4) where TT : struct, ITokens
    {
        int max = default(TT).Max;
        acc.S0 += Dot8(w, x4, xk);
        if (max > 1)
        {
            if (T > 1) acc.S1 += Dot8(w, x4, xk + in4);
            if (T > 2) acc.S2 += Dot8(w, x4, xk + 2L * in4);
            if (T > 3) acc.S3 += Dot8(w, x4, xk + 3L * in4);
            if (T > 4) acc.S4 += Dot8(w, x4, xk + 4L * in4);
            if (T > 5) acc.S5 += Dot8(w, x4, xk + 5L * in4);
            if (T > 6) acc.S6 += Dot8(w, x4, xk + 6L * in4);
            if (T > 7) acc.S7 += Dot8(w, x4, xk + 7L * in4);
        }
    }

    // Lane 0 writes the warp's sum of token t's row into dst when t < T (T is the same for the whole warp).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(float acc, ArrayView<float> dst, int t, int T, int outDim, int row)
    {
        if (t >= T) return;
        float sum = Reduce.WarpSum(acc);
        if (Warp.LaneIdx == 0) dst[(long)t * outDim + row] = sum;
    }

    // kernels

    /// <summary>bf16 weights viewed as U4 (8 per element), x as F4; in % 8 == 0, T &lt;= TT.Max.</summary>
    public static void GemvBf16<TT>(ArrayView<F4> x, ArrayView<U4> weight, ArrayView<float> dst, int T, int inDim, int outDim)
        where TT : struct, ITokens
    {
        int row = (Grid.IdxX * Group.DimX + Group.IdxX) >> 5, lane = Warp.LaneIdx;
        if (row >= outDim) return;
        int chunks = inDim / 8, in4 = inDim / 4;
        long w0 = (long)row * chunks;
        Sums8 acc = default;
        int k = lane;
        for (; k + 7 * 32 < chunks; k += 8 * 32)
        {
            // Eight independent 16-byte weight loads in flight per lane before the first use (latency hiding).
            U4 a0 = weight[w0 + k], a1 = weight[w0 + k + 32], a2 = weight[w0 + k + 64], a3 = weight[w0 + k + 96];
            U4 a4 = weight[w0 + k + 128], a5 = weight[w0 + k + 160], a6 = weight[w0 + k + 192], a7 = weight[w0 + k + 224];
            Accumulate<TT>(ref acc, a0, x, 2L * k, T, in4);
            Accumulate<TT>(ref acc, a1, x, 2L * (k + 32), T, in4);
            Accumulate<TT>(ref acc, a2, x, 2L * (k + 64), T, in4);
            Accumulate<TT>(ref acc, a3, x, 2L * (k + 96), T, in4);
            Accumulate<TT>(ref acc, a4, x, 2L * (k + 128), T, in4);
            Accumulate<TT>(ref acc, a5, x, 2L * (k + 160), T, in4);
            Accumulate<TT>(ref acc, a6, x, 2L * (k + 192), T, in4);
            Accumulate<TT>(ref acc, a7, x, 2L * (k + 224), T, in4);
        }
        for (; k < chunks; k += 32) Accumulate<TT>(ref acc, weight[w0 + k], x, 2L * k, T, in4);
        StoreRow(acc.S0, dst, 0, T, outDim, row);
        if (default(TT).Max > 1)
        {
            StoreRow(acc.S1, dst, 1, T, outDim, row);
            StoreRow(acc.S2, dst, 2, T, outDim, row);
            StoreRow(acc.S3, dst, 3, T, outDim, row);
            StoreRow(acc.S4, dst, 4, T, outDim, row);
            StoreRow(acc.S5, dst, 5, T, outDim, row);
            StoreRow(acc.S6, dst, 6, T, outDim, row);
            StoreRow(acc.S7, dst, 7, T, outDim, row);
        }
    }

    /// <summary>Any weight type (TE reads TW) and any in; T &lt;= GemvMaxTokens.</summary>
    public static void Gemv<TW, TE>(ArrayView<float> x, ArrayView<TW> weight, ArrayView<float> dst, int T, int inDim, int outDim)
        where TW : unmanaged
        where TE : struct, IElement<TW>
    {
        int row = (Grid.IdxX * Group.DimX + Group.IdxX) >> 5, lane = Warp.LaneIdx;
        if (row >= outDim) return;
        long w0 = (long)row * inDim;
        var acc = new float[GemvMaxTokens];
        for (int t = 0; t < GemvMaxTokens; t++) acc[t] = 0f;
        for (int k = lane; k < inDim; k += 32)
        {
            float wk = default(TE).Load(weight[w0 + k]);
            for (int t = 0; t < GemvMaxTokens; t++)
                if (t < T) acc[t] += wk * x[(long)t * inDim + k];
        }
        for (int t = 0; t < GemvMaxTokens; t++) StoreRow(acc[t], dst, t, T, outDim, row);
    }

    /// <summary>Grid (ceil(N / 128), ceil(M / 128)), 256 threads, GemmSharedBytes of dynamic shared memory: dst[M, N] = x[M, K] * weight[N, K]^T, bf16 weights.</summary>
    public static void GemmBf16(ArrayView<float> x, ArrayView<ushort> weight, ArrayView<float> dst, int M, int K, int N)
    {
        // Dynamic shared memory: two stages of A (x as bf16) and B (weight) tiles, [stage][128 rows][GemmRowWords words].
        var smem = SharedMemory.GetDynamic<ushort>();
        var As = smem.SubView(0, 4 * GemmTile * GemmRowWords).Cast<uint>();
        var Bs = smem.SubView(4 * GemmTile * GemmRowWords, 4 * GemmTile * GemmRowWords).Cast<uint>();
        var scratch = TensorCore.Scratch(smem, GemmSharedBytes);
        int tid = Group.IdxX, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int g = lane >> 2, tig = lane & 3, wm = warp >> 2, wn = warp & 3;
        int m0 = Grid.IdxY * GemmTile, n0 = Grid.IdxX * GemmTile;
        var acc = new Acc[16];   // [mt < 4][nt < 4]
        for (int i = 0; i < 16; i++) acc[i] = default;
        var ra = new float[16];  // this thread's 4 x 4 activations of the next tile (row idx / 8, columns 4 (idx % 8) ..)
        var rb = new uint[8];    // and 2 x 8 bf16 weights (row idx / 4, columns 8 (idx % 4) ..), packed in pairs
        int tiles = (K + GemmK - 1) / GemmK;
        LoadGemmTiles(x, weight, M, K, N, m0, n0, 0, tid, ra, rb);
        StoreGemmTiles(As, Bs, 0, tid, ra, rb);
        Group.Barrier();
        for (int kt = 0; kt < tiles; kt++)
        {
            int stage = (kt & 1) * GemmTile * GemmRowWords;
            if (kt + 1 < tiles) LoadGemmTiles(x, weight, M, K, N, m0, n0, (kt + 1) * GemmK, tid, ra, rb);
            for (int kk = 0; kk < GemmK / 2; kk += 8)   // word offset of the 16-column step
            {
                var a = new FragA[4];
                for (int mt = 0; mt < 4; mt++)
                {
                    int r = stage + (wm * 64 + mt * 16 + g) * GemmRowWords + kk + tig;
                    a[mt].A0 = As[r];
                    a[mt].A1 = As[r + 8 * GemmRowWords];
                    a[mt].A2 = As[r + 4];
                    a[mt].A3 = As[r + 8 * GemmRowWords + 4];
                }
                for (int nt = 0; nt < 4; nt++)
                {
                    int n = stage + (wn * 32 + nt * 8 + g) * GemmRowWords + kk + tig;
                    uint b0 = Bs[n], b1 = Bs[n + 4];
                    for (int mt = 0; mt < 4; mt++) TensorCore.Mma(ref acc[mt * 4 + nt], a[mt], b0, b1, scratch);
                }
            }
            if (kt + 1 < tiles) StoreGemmTiles(As, Bs, ((kt + 1) & 1) * GemmTile * GemmRowWords, tid, ra, rb);
            Group.Barrier();
        }
        for (int mt = 0; mt < 4; mt++)
            for (int nt = 0; nt < 4; nt++)
            {
                int r = m0 + wm * 64 + mt * 16 + g, c = n0 + wn * 32 + nt * 8 + tig * 2;
                Acc v = acc[mt * 4 + nt];
                if (r < M && c < N) dst[(long)r * N + c] = v.C0;
                if (r < M && c + 1 < N) dst[(long)r * N + c + 1] = v.C1;
                if (r + 8 < M && c < N) dst[(long)(r + 8) * N + c] = v.C2;
                if (r + 8 < M && c + 1 < N) dst[(long)(r + 8) * N + c + 1] = v.C3;
            }
    }

    // Global -> registers: 4 groups of 4 activations and 2 groups of 8 weights per thread for the tile at column k0;
    // out-of-range elements read as zero.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadGemmTiles(ArrayView<float> x, ArrayView<ushort> weight, int M, int K, int N, int m0, int n0, int k0,
        int tid, float[] ra, uint[] rb)
    {
        for (int i = 0; i < 4; i++)
        {
            int idx = tid + i * 256, m = m0 + idx / 8, k = k0 + idx % 8 * 4;
            for (int e = 0; e < 4; e++) ra[4 * i + e] = m < M && k + e < K ? x[(long)m * K + k + e] : 0f;
        }
        for (int i = 0; i < 2; i++)
        {
            int idx = tid + i * 256, n = n0 + idx / 4, k = k0 + idx % 4 * 8;
            for (int e = 0; e < 4; e++)
            {
                uint lo = n < N && k + 2 * e < K ? weight[(long)n * K + k + 2 * e] : 0u;
                uint hi = n < N && k + 2 * e + 1 < K ? weight[(long)n * K + k + 2 * e + 1] : 0u;
                rb[4 * i + e] = lo | (hi << 16);
            }
        }
    }

    // Registers -> shared stage at word offset stage: activations rounded to bf16 pairs.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreGemmTiles(ArrayView<uint> As, ArrayView<uint> Bs, int stage, int tid, float[] ra, uint[] rb)
    {
        for (int i = 0; i < 4; i++)
        {
            int idx = tid + i * 256, w = stage + idx / 8 * GemmRowWords + idx % 8 * 2;
            As[w] = Bf16.Pack(ra[4 * i], ra[4 * i + 1]);
            As[w + 1] = Bf16.Pack(ra[4 * i + 2], ra[4 * i + 3]);
        }
        for (int i = 0; i < 2; i++)
        {
            int idx = tid + i * 256, w = stage + idx / 4 * GemmRowWords + idx % 4 * 4;
            for (int e = 0; e < 4; e++) Bs[w + e] = rb[4 * i + e];
        }
    }
}

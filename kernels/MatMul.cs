// MatMul dst[T, out] = x[T, in] * weight[out, in]^T (CpuOps.MatMul); x and dst are f32.
// GemvBf16: decode (one token): one warp per output row, the weights in 16-byte loads that keep no line in L1
// (StreamedU4), sixteen in flight per lane (eight for rows longer than 4096 weights, with twice the warps an SM; the
// row's last block predicated); needs in % 8 == 0. GemvBf16SwiGlu (CpuOps.MatMulSwiGlu): the same rows of stacked
// gate and up weights with silu(gate) * up as the epilogue, so decode's MLP needs no separate SwiGlu launch.
// GemvBf16Rope (IBackend.MatMulThenRope: the projection, then CpuOps.Rope): the stacked q/k/v rows with the
// rotary op and the KV-cache store as the epilogue. GemvBf16AddNorm (IBackend.MatMulAddRmsNorm): the o/down rows with
// the residual add and the next RMSNorm's sum of squares as the epilogue, the norm's scale applied by the Rope or SwiGlu
// GEMV that reads its output (DeferredNorm), so the norm takes no launch. Gemv: any weight type and shape and up to 8
// tokens (the weights read once for all), 4-byte loads. Both: one warp a row, any group size (GemvRowsPerGroup on a
// GPU). GemmBf16: prefill on tensor cores (the fallback when cuBLAS is absent): 128x128x32 tiles, 8 warps as 2 x 4,
// each a 64 x 32 tile of 4 x 4 mma.sync fragments; x rounded to bf16 as it is staged in shared memory, f32
// accumulation. Exercised by the matmul, matmul_swiglu, matmul_rope and matmul_add_rmsnorm cases of
// tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Kernels;

/// <summary>16-byte weight loads a lane keeps in flight in a decode GEMV: sixteen, or eight (long rows).</summary>
public interface IGemvLoads
{
    bool Sixteen { get; }
}

public readonly struct SixteenLoads : IGemvLoads
{
    public bool Sixteen => true;
}

public readonly struct EightLoads : IGemvLoads
{
    public bool Sixteen => false;
}

public static class MatMulKernels
{
    // Rows (warps) a GEMV group on a GPU: H200, Llama-2-7B decode shapes, 2 rows against 8: 12288x4096 3,686 vs 3,471
    // GB/s, 22016x4096 3,981 vs 3,751, 32000x4096 4,113 vs 3,931 (smaller groups refill an SM as its rows finish).
    public const int GemvMaxTokens = 8, GemvRowsPerGroup = 2;

    /// <summary>Longest row (in weights) of GemvBf16&lt;SixteenLoads&gt;'s launches: one block of sixteen loads a lane; longer rows take EightLoads.</summary>
    public const int GemvLongRow = 16 * 32 * 8;
    public const int GemmTile = 128, GemmK = 32;
    private const int GemmRowWords = (GemmK + 8) / 2;   // padded shared row of 40 bf16: conflict-free fragment loads

    /// <summary>Dynamic shared memory of one GemmBf16 group (plus EmulatedTensorCores.ScratchBytes where the fragments are emulated).</summary>
    public const int GemmSharedBytes = 2 * 2 * GemmTile * GemmRowWords * 4;

    // The dot product of 8 bf16 weights with x4[xk], x4[xk + 1] (8 floats).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot8(in U4 w, ArrayView<F4> x4, long xk)
    {
        F4 a = x4[xk], b = x4[xk + 1];
        return Bf16.Lo(w.X) * a.X + Bf16.Hi(w.X) * a.Y + Bf16.Lo(w.Y) * a.Z + Bf16.Hi(w.Y) * a.W
             + Bf16.Lo(w.Z) * b.X + Bf16.Hi(w.Z) * b.Y + Bf16.Lo(w.W) * b.Z + Bf16.Hi(w.W) * b.W;
    }

    // Chunk i of the row at w0 (8 bf16 weights), or zeros past the row's chunks.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static U4 Load(StreamedU4 weight, long w0, int i, int chunks) => i < chunks ? weight[w0 + i] : default;

    // Dot8 of chunk i, or 0 past the row's chunks (x is not read there).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot8(in U4 w, ArrayView<F4> x4, int i, int chunks) => i < chunks ? Dot8(w, x4, 2L * i) : 0f;

    // Eight chunks of a row, a lane's: k, k + 32, .., k + 224 (loaded before any is used).
    private struct Block8
    {
        public U4 A0, A1, A2, A3, A4, A5, A6, A7;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Block8 Load(StreamedU4 w, long w0, int k) => new()
        {
            A0 = w[w0 + k], A1 = w[w0 + k + 32], A2 = w[w0 + k + 64], A3 = w[w0 + k + 96],
            A4 = w[w0 + k + 128], A5 = w[w0 + k + 160], A6 = w[w0 + k + 192], A7 = w[w0 + k + 224],
        };

        // The row's last, partial block: chunks past the row are zeros (their loads predicated off).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Block8 Load(StreamedU4 w, long w0, int k, int chunks) => new()
        {
            A0 = MatMulKernels.Load(w, w0, k, chunks), A1 = MatMulKernels.Load(w, w0, k + 32, chunks),
            A2 = MatMulKernels.Load(w, w0, k + 64, chunks), A3 = MatMulKernels.Load(w, w0, k + 96, chunks),
            A4 = MatMulKernels.Load(w, w0, k + 128, chunks), A5 = MatMulKernels.Load(w, w0, k + 160, chunks),
            A6 = MatMulKernels.Load(w, w0, k + 192, chunks), A7 = MatMulKernels.Load(w, w0, k + 224, chunks),
        };

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly float Dot(ArrayView<F4> x, int k) =>
            Dot8(A0, x, 2L * k) + Dot8(A1, x, 2L * (k + 32)) + Dot8(A2, x, 2L * (k + 64)) + Dot8(A3, x, 2L * (k + 96))
            + Dot8(A4, x, 2L * (k + 128)) + Dot8(A5, x, 2L * (k + 160)) + Dot8(A6, x, 2L * (k + 192)) + Dot8(A7, x, 2L * (k + 224));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly float Dot(ArrayView<F4> x, int k, int chunks) =>
            Dot8(A0, x, k, chunks) + Dot8(A1, x, k + 32, chunks) + Dot8(A2, x, k + 64, chunks) + Dot8(A3, x, k + 96, chunks)
            + Dot8(A4, x, k + 128, chunks) + Dot8(A5, x, k + 160, chunks) + Dot8(A6, x, k + 192, chunks) + Dot8(A7, x, k + 224, chunks);
    }

    // kernels

    /// <summary>One token: x as F4 [in / 4], bf16 weights as U4 (8 per element) [out, in / 8], in % 8 == 0.</summary>
    public static void GemvBf16<TLoads>(ArrayView<F4> x, StreamedU4 weight, ArrayView<float> dst, int inDim, int outDim)
        where TLoads : struct, IGemvLoads
    {
        int row = (Grid.IdxX * Group.DimX + Group.IdxX) >> 5, lane = Warp.LaneIdx;
        if (row >= outDim) return;
        int chunks = inDim / 8;
        float sum = RowDot<TLoads>(x, weight, (long)row * chunks, chunks, lane);
        if (lane == 0) dst[row] = sum;
    }

    /// <summary>
    /// One token, the o/down projection with the residual add and the first half of the next RMSNorm as its epilogue
    /// (IBackend.MatMulAddRmsNorm): v = residual + x . W^T is stored to residual and v times the norm's weight to dst,
    /// and each group adds its rows' sum of v^2 to the counters sums (SquareSums); the GEMV that reads dst applies the
    /// norm's scale to its sums (DeferredNorm), so the norm takes no launch of its own. Groups and rows as GemvBf16.
    /// </summary>
    public static void GemvBf16AddNorm<TLoads>(ArrayView<F4> x, StreamedU4 weight, ArrayView<float> residual, ArrayView<float> normWeight,
        ArrayView<float> dst, ArrayView<ulong> sums, int inDim, int outDim)
        where TLoads : struct, IGemvLoads
    {
        var squares = SharedMemory.Allocate<float>(32);
        int row = (Grid.IdxX * Group.DimX + Group.IdxX) >> 5, lane = Warp.LaneIdx;
        float square = 0f;
        if (row < outDim)
        {
            int chunks = inDim / 8;
            float sum = RowDot<TLoads>(x, weight, (long)row * chunks, chunks, lane);
            if (lane == 0)
            {
                float v = residual[row] + sum;
                residual[row] = v;
                dst[row] = v * normWeight[row];
                square = v * v;
            }
        }
        if (lane == 0) squares[Warp.WarpIdx] = square;
        Group.Barrier();
        if (Group.IdxX != 0) return;
        float partial = 0f;
        for (int i = 0; i < Group.DimX >> 5; i++) partial += squares[i];
        SquareSums.Add(sums, partial);
    }

    /// <summary>
    /// One token, gate and up stacked as [2 ff, in] bf16 (U4 rows as GemvBf16): dst[j] = silu(x . gate_j) * (x . up_j),
    /// each product times the scale of a deferred norm (norm.On: x is the residual times the norm's weight). Groups of
    /// 2R warps (R = Group.DimX / 64): warps 0 .. R-1 take gate rows R g .., warps R .. 2R-1 the same up rows (rows
    /// ff + R g ..); the gate warps write dst after one exchange through shared memory.
    /// </summary>
    public static void GemvBf16SwiGlu(ArrayView<F4> x, StreamedU4 weight, ArrayView<float> dst, ArrayView<ulong> sums, DeferredNorm norm,
        int inDim, int ff)
    {
        var up = SharedMemory.Allocate<float>(16);
        int r = Group.DimX >> 6, w = Warp.WarpIdx, lane = Warp.LaneIdx;
        bool isUp = w >= r;
        int j = Grid.IdxX * r + (isUp ? w - r : w), chunks = inDim / 8;
        var counters = norm.Load(sums);   // before the row's weights, so that their round trip overlaps them
        float sum = j < ff ? RowDot<SixteenLoads>(x, weight, (long)(isUp ? ff + j : j) * chunks, chunks, lane) : 0f;
        sum *= norm.Scale(counters);
        if (isUp && lane == 0) up[w - r] = sum;
        Group.Barrier();
        if (!isUp && lane == 0 && j < ff) dst[j] = ActivationKernels.Silu<NoRounding>(sum, up[w]);
    }

    /// <summary>
    /// One token, the stacked q/k/v projection with the rotary op as its epilogue (IBackend.MatMulRope): dst = x . qkv^T
    /// [qDim + 2 kvDim] with q and k rotated pair by pair as RopeKernels.Rope does (whole heads rotary, bf16 cache,
    /// f32 compute), k and v stored at the layer's cache row of the position; each product times the scale of a
    /// deferred norm (norm.On: x is the residual times the norm's weight). Group u (2 warps) takes one unit: a rotary
    /// pair (rows j and j + headDim / 2 of a q or k head), or two neighbouring v rows; the second warp hands its sum to
    /// the first through shared memory, whose lane 0 rotates and stores both.
    /// </summary>
    public static void GemvBf16Rope(ArrayView<F4> x, StreamedU4 weight, ArrayView<float> dst, ArrayView<ushort> kcache,
        ArrayView<ushort> vcache, ArrayView<float> invFreq, ArrayView<int> step, RopeArgs a, ArrayView<ulong> sums, DeferredNorm norm, int inDim)
    {
        var second = SharedMemory.Allocate<float>(1);
        int w = Warp.WarpIdx, lane = Warp.LaneIdx, u = Grid.IdxX, chunks = inDim / 8;
        int half = a.HeadDim / 2, qDim = a.NumHeads * a.HeadDim, kvDim = a.NumKvHeads * a.HeadDim;
        int qUnits = qDim / 2, ropeUnits = qUnits + kvDim / 2;
        // The unit's rows r0, r1 and its pair p (rotary units).
        int r0, p = 0;
        if (u < ropeUnits)
        {
            int v = u < qUnits ? u : u - qUnits;
            p = v % half;
            r0 = (u < qUnits ? 0 : qDim) + v / half * a.HeadDim + p;
        }
        else
        {
            r0 = qDim + kvDim + 2 * (u - ropeUnits);
        }
        int r1 = u < ropeUnits ? r0 + half : r0 + 1;
        var counters = norm.Load(sums);   // before the row's weights, so that their round trip overlaps them
        float sum = RowDot<SixteenLoads>(x, weight, (long)(w == 0 ? r0 : r1) * chunks, chunks, lane) * norm.Scale(counters);
        if (w == 1 && lane == 0) second[0] = sum;
        Group.Barrier();
        if (w != 0 || lane != 0) return;
        float s1 = second[0];
        int pos = a.Start(step);
        long cRow = (long)(a.LayerRow0 + pos) * kvDim;
        if (u >= ropeUnits)
        {
            dst[r0] = sum;
            dst[r1] = s1;
            vcache[cRow + r0 - qDim - kvDim] = Bf16.FromF32(sum);
            vcache[cRow + r1 - qDim - kvDim] = Bf16.FromF32(s1);
            return;
        }
        RopeMath.CosSin(RopeMath.Angle(pos, invFreq[p]), out float c, out float s);
        RopeMath.Rotate<NoRounding>(sum, s1, c * a.Magnitude, s * a.Magnitude, out float y0, out float y1);
        if (u < qUnits)
        {
            float qs = a.QueryScaleOn != 0 ? RopeMath.QueryScale(pos, a.QueryScaleContext) : 1f;
            dst[r0] = y0 * qs;
            dst[r1] = y1 * qs;
            return;
        }
        dst[r0] = y0;
        dst[r1] = y1;
        kcache[cRow + r0 - qDim] = Bf16.FromF32(y0);
        kcache[cRow + r1 - qDim] = Bf16.FromF32(y1);
    }

    // The dot product of x with the bf16 row at w0 (chunks of 8 weights), reduced over the warp (every lane gets it).
    // Blocks of sixteen 16-byte loads a lane in flight before the first use (a row of 4096 weights is one round trip to
    // memory), or of eight (TLoads: EightLoads, for long rows, whose kernel is capped to 64 registers so that twice
    // the warps share an SM: H100, 4096x11008 2,778 GB/s against 2,659, and slower at the other Llama shapes). The
    // row's last, partial block has its loads issued at once too (predicated), so a row of 11008 weights takes three
    // round trips (two full blocks and this one) instead of seven. (Two blocks of eight loads a lane, the next block's
    // issued before the last one is summed, ran 20-35% slower on the H200: ptxas spread those loads among the sums.)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RowDot<TLoads>(ArrayView<F4> x, StreamedU4 weight, long w0, int chunks, int lane)
        where TLoads : struct, IGemvLoads
    {
        bool sixteen = default(TLoads).Sixteen;
        int span = sixteen ? 16 * 32 : 8 * 32;
        float acc = 0f;
        int k = lane;
        for (; k + span - 32 < chunks; k += span)
        {
            var a = Block8.Load(weight, w0, k);
            if (sixteen)
            {
                var b = Block8.Load(weight, w0, k + 256);
                acc += a.Dot(x, k) + b.Dot(x, k + 256);
            }
            else
            {
                acc += a.Dot(x, k);
            }
        }
        if (k < chunks)
        {
            var a = Block8.Load(weight, w0, k, chunks);
            if (sixteen)
            {
                var b = Block8.Load(weight, w0, k + 256, chunks);
                acc += a.Dot(x, k, chunks) + b.Dot(x, k + 256, chunks);
            }
            else
            {
                acc += a.Dot(x, k, chunks);
            }
        }
        return Reduce.WarpSum(acc);
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
        for (int t = 0; t < GemvMaxTokens; t++)
        {
            if (t >= T) break;   // T is the same for the whole warp
            float sum = Reduce.WarpSum(acc[t]);
            if (lane == 0) dst[(long)t * outDim + row] = sum;
        }
    }

    /// <summary>Grid (ceil(N / 128), ceil(M / 128)), 256 threads, GemmSharedBytes of dynamic shared memory: dst[M, N] = x[M, K] * weight[N, K]^T, bf16 weights.</summary>
    public static void GemmBf16<TC>(ArrayView<float> x, ArrayView<ushort> weight, ArrayView<float> dst, int M, int K, int N)
        where TC : struct, ITensorCores
    {
        // Dynamic shared memory: two stages of A (x as bf16) and B (weight) tiles, [stage][128 rows][GemmRowWords words].
        var smem = SharedMemory.GetDynamic<ushort>();
        var As = smem.SubView(0, 4 * GemmTile * GemmRowWords).Cast<uint>();
        var Bs = smem.SubView(4 * GemmTile * GemmRowWords, 4 * GemmTile * GemmRowWords).Cast<uint>();
        var scratch = default(TC).Scratch(smem, GemmSharedBytes);
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
                    for (int mt = 0; mt < 4; mt++) default(TC).Mma(ref acc[mt * 4 + nt], a[mt], b0, b1, scratch);
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

// MatMul dst[T, out] = x[T, in] * weight[out, in]^T (CpuOps.MatMul). x and dst are f32; weight is f32, f16 or bf16.
// gemv_warp_per_row_*: decode (T <= 8; t1: one token): one warp per output row, weights read once for all T tokens, 16-byte loads.
// gemm_mma_bf16: prefill: 128x128x32 tiles, mma.sync m16n8k16 bf16 with f32 accumulation; x rounded to bf16 on load.
// to_bf16_f32: rounds the activations to bf16 for the optional cuBLAS GEMM (CuBlas.cs), same rounding as gemm_mma_bf16.
// widen_{bf16,f16}_f32: weights to f32 (exact) for the full-precision cuBLAS SGEMM.
// Exercised by tests/BackendOpsTests.cs MatMul; timed by bench/KernelBenchmarks.cs MatMul.
#include "common.cuh"

#define GEMV_MAX_T 8

__device__ __forceinline__ void unpack_bf16x8(uint4 w, float* f)
{
    f[0] = __uint_as_float(w.x << 16); f[1] = __uint_as_float(w.x & 0xffff0000u);
    f[2] = __uint_as_float(w.y << 16); f[3] = __uint_as_float(w.y & 0xffff0000u);
    f[4] = __uint_as_float(w.z << 16); f[5] = __uint_as_float(w.z & 0xffff0000u);
    f[6] = __uint_as_float(w.w << 16); f[7] = __uint_as_float(w.w & 0xffff0000u);
}

// Weights are read once: bypass L1 so the activations stay cached there.
__device__ __forceinline__ uint4 load_stream(const bf16* p)
{
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// acc[t] += dot(8 weights, x[t, k..k+8]) for every token t < T; x points at column k of token 0.
template <int MAXT>
__device__ __forceinline__ void gemv_accum8(uint4 wv, const float* x, int T, int in, float* acc)
{
    float wf[8];
    unpack_bf16x8(wv, wf);
#pragma unroll
    for (int t = 0; t < MAXT; t++)
    {
        if (t < T)
        {
            const float4* xp = (const float4*)(x + (i64)t * in);
            float4 a = xp[0], b = xp[1];
            acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w
                    + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
        }
    }
}

template <int MAXT>
__device__ __forceinline__ void gemv_store(float* acc, float* dst, int T, int out, int row)
{
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MAXT; t++)
    {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < T) dst[(i64)t * out + row] = s;
    }
}

// T <= MAXT tokens; block of 256 threads = 8 rows. The 16-byte path needs in % 8 == 0 (rows stay 16-byte aligned).
template <int MAXT>
__device__ __forceinline__ void gemv_bf16(const float* x, const bf16* weight, float* dst, int T, int in, int out)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= out) return;
    const bf16* w = weight + (i64)row * in;
    float acc[MAXT];
#pragma unroll
    for (int t = 0; t < MAXT; t++) acc[t] = 0.0f;
    if ((in & 7) == 0)
    {
        // Eight independent 16-byte weight loads in flight per lane before the first use (HBM latency hiding).
        int k = lane * 8;
        for (; k + 7 * 256 < in; k += 8 * 256)
        {
            uint4 wv[8];
#pragma unroll
            for (int u = 0; u < 8; u++) wv[u] = load_stream(w + k + u * 256);
#pragma unroll
            for (int u = 0; u < 8; u++) gemv_accum8<MAXT>(wv[u], x + k + u * 256, T, in, acc);
        }
        for (; k < in; k += 256) gemv_accum8<MAXT>(load_stream(w + k), x + k, T, in, acc);
    }
    else
    {
        for (int k = lane; k < in; k += 32)
        {
            float wk = bf16_to_f32(w[k]);
#pragma unroll
            for (int t = 0; t < MAXT; t++)
                if (t < T) acc[t] += wk * x[(i64)t * in + k];
        }
    }
    gemv_store<MAXT>(acc, dst, T, out, row);
}

// kernels

extern "C" __global__ void gemv_warp_per_row_bf16(const float* x, const bf16* weight, float* dst, int T, int in, int out)
{
    gemv_bf16<GEMV_MAX_T>(x, weight, dst, T, in, out);
}

// Decode of one token: no per-token predicates, fewer registers.
extern "C" __global__ void gemv_warp_per_row_t1_bf16(const float* x, const bf16* weight, float* dst, int T, int in, int out)
{
    gemv_bf16<1>(x, weight, dst, 1, in, out);
}

extern "C" __global__ void gemv_warp_per_row_f16(const float* x, const f16* weight, float* dst, int T, int in, int out)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= out) return;
    const f16* w = weight + (i64)row * in;
    float acc[GEMV_MAX_T];
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) acc[t] = 0.0f;
    for (int k = lane; k < in; k += 32)
    {
        float wk = f16_to_f32(w[k]);
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++)
            if (t < T) acc[t] += wk * x[(i64)t * in + k];
    }
    gemv_store<GEMV_MAX_T>(acc, dst, T, out, row);
}

extern "C" __global__ void gemv_warp_per_row_f32(const float* x, const float* weight, float* dst, int T, int in, int out)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= out) return;
    const float* w = weight + (i64)row * in;
    float acc[GEMV_MAX_T];
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) acc[t] = 0.0f;
    for (int k = lane; k < in; k += 32)
    {
        float wk = w[k];
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++)
            if (t < T) acc[t] += wk * x[(i64)t * in + k];
    }
    gemv_store<GEMV_MAX_T>(acc, dst, T, out, row);
}

#define BM 128
#define BN 128
#define BK 32
#define SK (BK + 8)   // padded smem row (80 bytes): 16-byte aligned rows, conflict-free 32-bit fragment loads

// 256 threads = 8 warps as 2 (M) x 4 (N), each warp a 64 x 32 tile of 4 x 4 mma fragments.
extern "C" __global__ void __launch_bounds__(256) gemm_mma_bf16(const float* x, const bf16* weight, float* dst, int M, int K, int N)
{
    __shared__ __align__(16) bf16 As[2][BM][SK];
    __shared__ __align__(16) bf16 Bs[2][BN][SK];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, tig = lane & 3, wm = warp >> 2, wn = warp & 3;
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    bool vecA = (K & 3) == 0, vecB = (K & 7) == 0;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.0f;

    float4 ra[4];
    uint4 rb[2];
    auto loadTiles = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; i++)
        {
            int idx = tid + i * 256, r = idx >> 3, c = (idx & 7) * 4, m = m0 + r, k = k0 + c;
            const float* p = x + (i64)m * K + k;
            if (m < M && vecA && k + 3 < K) ra[i] = *(const float4*)p;
            else
            {
                ra[i].x = (m < M && k < K) ? p[0] : 0.0f;
                ra[i].y = (m < M && k + 1 < K) ? p[1] : 0.0f;
                ra[i].z = (m < M && k + 2 < K) ? p[2] : 0.0f;
                ra[i].w = (m < M && k + 3 < K) ? p[3] : 0.0f;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
        {
            int idx = tid + i * 256, r = idx >> 2, c = (idx & 3) * 8, n = n0 + r, k = k0 + c;
            const bf16* p = weight + (i64)n * K + k;
            if (n < N && vecB && k + 7 < K) rb[i] = __ldg((const uint4*)p);
            else
            {
                u32 h[8];
#pragma unroll
                for (int e = 0; e < 8; e++) h[e] = (n < N && k + e < K) ? (u32)p[e] : 0u;
                rb[i].x = h[0] | (h[1] << 16); rb[i].y = h[2] | (h[3] << 16);
                rb[i].z = h[4] | (h[5] << 16); rb[i].w = h[6] | (h[7] << 16);
            }
        }
    };
    auto storeTiles = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; i++)
        {
            int idx = tid + i * 256, r = idx >> 3, c = (idx & 7) * 4;
            uint2 packed;
            packed.x = pack_bf16x2(ra[i].x, ra[i].y);
            packed.y = pack_bf16x2(ra[i].z, ra[i].w);
            *(uint2*)&As[buf][r][c] = packed;
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
        {
            int idx = tid + i * 256, r = idx >> 2, c = (idx & 3) * 8;
            *(uint4*)&Bs[buf][r][c] = rb[i];
        }
    };

    int tiles = (K + BK - 1) / BK;
    loadTiles(0);
    storeTiles(0);
    __syncthreads();
    for (int kt = 0; kt < tiles; kt++)
    {
        int buf = kt & 1;
        if (kt + 1 < tiles) loadTiles((kt + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16)
        {
            u32 a[4][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
            {
                int r = wm * 64 + mt * 16 + g;
                a[mt][0] = *(const u32*)&As[buf][r][kk + tig * 2];
                a[mt][1] = *(const u32*)&As[buf][r + 8][kk + tig * 2];
                a[mt][2] = *(const u32*)&As[buf][r][kk + tig * 2 + 8];
                a[mt][3] = *(const u32*)&As[buf][r + 8][kk + tig * 2 + 8];
            }
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
            {
                int n = wn * 32 + nt * 8 + g;
                b[nt][0] = *(const u32*)&Bs[buf][n][kk + tig * 2];
                b[nt][1] = *(const u32*)&Bs[buf][n][kk + tig * 2 + 8];
            }
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                        : "+f"(acc[mt][nt][0]), "+f"(acc[mt][nt][1]), "+f"(acc[mt][nt][2]), "+f"(acc[mt][nt][3])
                        : "r"(a[mt][0]), "r"(a[mt][1]), "r"(a[mt][2]), "r"(a[mt][3]), "r"(b[nt][0]), "r"(b[nt][1]));
        }
        if (kt + 1 < tiles) storeTiles(buf ^ 1);
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
        {
            int r = m0 + wm * 64 + mt * 16 + g, c = n0 + wn * 32 + nt * 8 + tig * 2;
#pragma unroll
            for (int h = 0; h < 2; h++)
            {
                int rr = r + h * 8;
                if (rr >= M) continue;
                if (c < N) dst[(i64)rr * N + c] = acc[mt][nt][h * 2];
                if (c + 1 < N) dst[(i64)rr * N + c + 1] = acc[mt][nt][h * 2 + 1];
            }
        }
}

// Activations for the cuBLAS prefill path: dst (bf16) = x (f32) rounded to nearest even, 4 elements per thread.
extern "C" __global__ void to_bf16_f32(const float* x, bf16* dst, i64 n)
{
    i64 stride = (i64)gridDim.x * blockDim.x * 4;
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n; i += stride)
    {
        if (i + 3 < n && (((size_t)(x + i)) & 15) == 0)
        {
            float4 v = *(const float4*)(x + i);
            uint2 p;
            p.x = pack_bf16x2(v.x, v.y);
            p.y = pack_bf16x2(v.z, v.w);
            *(uint2*)(dst + i) = p;
        }
        else
            for (i64 j = i; j < n && j < i + 4; j++) dst[j] = f32_to_bf16(x[j]);
    }
}

// dst (f32) = src (bf16 or f16) exactly: weight rows for the full-precision GEMM, which multiplies f32 by f32.
extern "C" __global__ void widen_bf16_f32(const bf16* src, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = bf16_to_f32(src[i]);
}

extern "C" __global__ void widen_f16_f32(const f16* src, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = f16_to_f32(src[i]);
}

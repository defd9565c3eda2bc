// Causal grouped-query attention over the KV cache (CpuOps.Attention); softmax scale 1/sqrt(headDim). The cache is
// bf16, except in full-precision mode, where it is f32 and attention_split_f32 serves prefill and decode.
// attention_split_bf16: one block per (head, query, key split); 4 warps stride over the split's keys with an
// online softmax (running max m, sum l, weighted values acc); then the warps merge in shared memory. With one
// split the block writes dst; with several (decode, long contexts) it writes (m, l, acc) and attention_combine
// merges the splits. attention_tiled_bf16 (head dim <= 128, up to 8 query heads per KV head) is the fast path: one
// block per (KV head, query, split) stages 64-key K/V tiles in shared memory with 16-byte loads, so every query
// head of the group shares one read of the cache. attention_flash_{,q128_}hd{64,128}_bf16: prefill on tensor cores, 64 or 128 queries per block.
// Softmax weights: the flash kernels always feed them to the tensor cores as bf16; the split and tiled kernels round
// them to bf16 before they weight V when roundP is 1 (bf16 compute), the sums always use the unrounded weights.
// Exercised by tests/BackendOpsTests.cs Attention.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_MAX_HEAD_DIM 256
#define ATT_PER_LANE (ATT_MAX_HEAD_DIM / 32)
#define TILE_KEYS 64
#define TILE_MAX_HEAD_DIM 128
#define TILE_MAX_GROUP 8
#define TILE_ROW (TILE_MAX_HEAD_DIM + 8)   // bf16 per shared row: 16-byte aligned, rows offset by 4 banks

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte global -> shared copy that bypasses registers; src_bytes 0 writes zeros (keys past the end).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int srcBytes)
{
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(addr), "l"(gmem), "r"(srcBytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// B fragments of two adjacent 8-key groups (k = dim, n = key) of row-major K [key][dim]: four 8x8 matrices.
__device__ __forceinline__ void ldmatrix_x4(const bf16* p, u32& r0, u32& r1, u32& r2, u32& r3)
{
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}

// B fragments of two adjacent 8-dim groups (k = key, n = dim) of row-major V [key][dim]: four transposed 8x8 matrices.
__device__ __forceinline__ void ldmatrix_x4_trans(const bf16* p, u32& r0, u32& r1, u32& r2, u32& r3)
{
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}

// 2^x with the hardware approximation (flushes subnormal results to zero; 2^-inf = 0); softmax weights only.
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One 64-key tile of K or V rows [k0, k0 + 64) into shared memory with cp.async; rows at or past kend become zeros.
template <int HD, int THREADS>
__device__ __forceinline__ void flash_load_tile(bf16 (*tile)[HD + 8], const bf16* base, int k0, int kend, int kvDim)
{
    for (int c = threadIdx.x; c < 64 * (HD / 8); c += THREADS)
    {
        int j = c / (HD / 8), d = (c % (HD / 8)) * 8;
        bool in = k0 + j < kend;
        cp_async16(&tile[j][d], base + (i64)(in ? k0 + j : 0) * kvDim + d, in ? 16 : 0);
    }
    cp_async_commit();
}

// Flash attention (prefill): block = WARPS warps = 16 * WARPS queries of head blockIdx.y; each warp owns 16 query
// rows. Per 64-key tile: S = Q K^T on tensor cores (Q as bf16), scaled by log2(e)/sqrt(HD) in f32, causal mask only on
// tiles that cross a warp's diagonal, online softmax in the exp2 domain, O += P V with P reused from the S registers
// as bf16. f32 accumulation throughout. K and V tiles are fetched with cp.async: V(j) while S(j) is computed, K(j+1)
// while P V(j) is, so loads overlap the tensor-core work. Warps whose rows all precede a tile skip it.
template <int HD, int WARPS>
__device__ __forceinline__ void flash_attention(const float* q, const bf16* kcache, const bf16* vcache, float* dst,
    int T, int numHeads, int numKvHeads, int startPos, float scaleLog2)
{
    constexpr int BM = 16 * WARPS, THREADS = 32 * WARPS;
    __shared__ __align__(16) bf16 ks[64][HD + 8];
    __shared__ __align__(16) bf16 vs[64][HD + 8];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tig = lane & 3;
    int h = blockIdx.y, m0 = (gridDim.x - 1 - blockIdx.x) * BM;   // heaviest (latest) query tiles first
    int kvh = h / (numHeads / numKvHeads), kvDim = numKvHeads * HD, qStride = numHeads * HD;
    int r0 = m0 + warp * 16 + g, r1 = r0 + 8;
    int kend = startPos + min(m0 + BM - 1, T - 1) + 1;
    const bf16* kbase = kcache + (i64)kvh * HD;
    const bf16* vbase = vcache + (i64)kvh * HD;
    flash_load_tile<HD, THREADS>(ks, kbase, 0, kend, kvDim);
    u32 qa[HD / 16][4];
    {
        const float* q0 = q + (i64)min(r0, T - 1) * qStride + h * HD;
        const float* q1 = q + (i64)min(r1, T - 1) * qStride + h * HD;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
        {
            int c = kk * 16 + tig * 2;
            qa[kk][0] = pack_bf16x2(q0[c], q0[c + 1]);
            qa[kk][1] = pack_bf16x2(q1[c], q1[c + 1]);
            qa[kk][2] = pack_bf16x2(q0[c + 8], q0[c + 9]);
            qa[kk][3] = pack_bf16x2(q1[c + 8], q1[c + 9]);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float mrow0 = NEG_INF, mrow1 = NEG_INF, lrow0 = 0.0f, lrow1 = 0.0f;
    int qpos0 = startPos + r0, qpos1 = startPos + r1;
    int warpFirst = startPos + m0 + warp * 16;   // smallest query position of this warp
    for (int k0 = 0; k0 < kend; k0 += 64)
    {
        cp_async_wait_all();
        __syncthreads();                       // K(j) visible; every warp is done with V(j-1)
        flash_load_tile<HD, THREADS>(vs, vbase, k0, kend, kvDim);
        bool active = k0 <= warpFirst + 15;
        float s[8][4];
        if (active)
        {
#pragma unroll
            for (int nt = 0; nt < 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
                for (int nt = 0; nt < 8; nt += 2)
                {
                    u32 b[4];
                    ldmatrix_x4(&ks[nt * 8 + (lane & 7) + ((lane >> 4) << 3)][kk * 16 + ((lane >> 3) & 1) * 8], b[0], b[1], b[2], b[3]);
                    mma_bf16(s[nt], qa[kk], b[0], b[1]);
                    mma_bf16(s[nt + 1], qa[kk], b[2], b[3]);
                }
#pragma unroll
            for (int nt = 0; nt < 8; nt++) { s[nt][0] *= scaleLog2; s[nt][1] *= scaleLog2; s[nt][2] *= scaleLog2; s[nt][3] *= scaleLog2; }
            float mx0 = mrow0, mx1 = mrow1;
            if (k0 + 63 > warpFirst)
            {
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        int key = k0 + nt * 8 + tig * 2 + e;
                        if (key > qpos0) s[nt][e] = NEG_INF;
                        if (key > qpos1) s[nt][2 + e] = NEG_INF;
                    }
            }
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
            {
                mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
                mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            float c0 = fast_exp2(mrow0 - mx0), c1 = fast_exp2(mrow1 - mx1);
            mrow0 = mx0;
            mrow1 = mx1;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
            {
                s[nt][0] = fast_exp2(s[nt][0] - mx0); s[nt][1] = fast_exp2(s[nt][1] - mx0);
                s[nt][2] = fast_exp2(s[nt][2] - mx1); s[nt][3] = fast_exp2(s[nt][3] - mx1);
                sum0 += s[nt][0] + s[nt][1];
                sum1 += s[nt][2] + s[nt][3];
            }
            sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
            sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
            sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
            sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
            lrow0 = lrow0 * c0 + sum0;
            lrow1 = lrow1 * c1 + sum1;
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) { o[nt][0] *= c0; o[nt][1] *= c0; o[nt][2] *= c1; o[nt][3] *= c1; }
        }
        cp_async_wait_all();
        __syncthreads();                       // V(j) visible; every warp is done with K(j)
        if (k0 + 64 < kend) flash_load_tile<HD, THREADS>(ks, kbase, k0 + 64, kend, kvDim);
        if (active)
        {
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                u32 pa[4] = {
                    pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                    pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]),
                };
#pragma unroll
                for (int nt = 0; nt < HD / 8; nt += 2)
                {
                    u32 b[4];
                    ldmatrix_x4_trans(&vs[kk * 16 + (lane & 15)][(nt + (lane >> 4)) * 8], b[0], b[1], b[2], b[3]);
                    mma_bf16(o[nt], pa, b[0], b[1]);
                    mma_bf16(o[nt + 1], pa, b[2], b[3]);
                }
            }
        }
    }
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++)
    {
        int col = h * HD + nt * 8 + tig * 2;
        if (r0 < T)
        {
            dst[(i64)r0 * qStride + col] = o[nt][0] / lrow0;
            dst[(i64)r0 * qStride + col + 1] = o[nt][1] / lrow0;
        }
        if (r1 < T)
        {
            dst[(i64)r1 * qStride + col] = o[nt][2] / lrow1;
            dst[(i64)r1 * qStride + col + 1] = o[nt][3] / lrow1;
        }
    }
}


// kernels

// q [T, numHeads*headDim]; kcache/vcache rows [layerRow0 + p, numKvHeads*headDim]; query t sees p <= startPos + t.
// partial [T, numHeads, splits, headDim + 2] holds m, l, acc[headDim] per split when splits > 1.
template <typename C>
__device__ __forceinline__ void attention_split(
    const float* q, const C* kcache, const C* vcache, float* dst, float* partial,
    int numHeads, int numKvHeads, int headDim, int startPos, int splitLen, int splits, float scale, int roundP)
{
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAX_HEAD_DIM];
    int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int len = startPos + t + 1;
    int kvh = h / (numHeads / numKvHeads), kvDim = numKvHeads * headDim;
    int begin = s * splitLen, end = min(len, begin + splitLen);
    const float* qr = q + ((i64)t * numHeads + h) * headDim;

    float qv[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++)
    {
        int d = lane + 32 * i;
        qv[i] = d < headDim ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int p = begin + warp; p < end; p += ATT_WARPS)
    {
        const C* kr = kcache + (i64)p * kvDim + kvh * headDim;
        const C* vr = vcache + (i64)p * kvDim + kvh * headDim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++)
        {
            int d = lane + 32 * i;
            if (d < headDim) dot += qv[i] * load_kv(kr + d);
        }
        dot = warp_sum(dot) * scale;
        float mn = m > dot ? m : dot;   // NaN in dot propagates
        float corr = expf(m - mn), e = expf(dot - mn);
        l = l * corr + e;
        float ew = roundP ? round_bf16(e) : e;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++)
        {
            int d = lane + 32 * i;
            if (d < headDim) acc[i] = acc[i] * corr + ew * load_kv(vr + d);
        }
        m = mn;
    }
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++)
    {
        int d = lane + 32 * i;
        if (d < headDim) sm_acc[warp][d] = acc[i];
    }
    __syncthreads();
    float mAll = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) mAll = sm_m[w] > mAll || sm_m[w] != sm_m[w] ? sm_m[w] : mAll;
    float f[ATT_WARPS], lAll = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
    {
        f[w] = sm_l[w] == 0.0f && sm_m[w] == NEG_INF ? 0.0f : expf(sm_m[w] - mAll);
        lAll += sm_l[w] * f[w];
    }
    if (splits == 1)
    {
        float* out = dst + ((i64)t * numHeads + h) * headDim;
        for (int d = threadIdx.x; d < headDim; d += blockDim.x)
        {
            float a = 0.0f;
            for (int w = 0; w < ATT_WARPS; w++) a += sm_acc[w][d] * f[w];
            out[d] = a / lAll;
        }
    }
    else
    {
        float* out = partial + (((i64)t * numHeads + h) * splits + s) * (headDim + 2);
        if (threadIdx.x == 0) { out[0] = mAll; out[1] = lAll; }
        for (int d = threadIdx.x; d < headDim; d += blockDim.x)
        {
            float a = 0.0f;
            for (int w = 0; w < ATT_WARPS; w++) a += sm_acc[w][d] * f[w];
            out[2 + d] = a;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_split_bf16(
    const float* q, const bf16* kcache, const bf16* vcache, float* dst, float* partial,
    int numHeads, int numKvHeads, int headDim, int startPos, int splitLen, int splits, float scale, int roundP)
{
    attention_split(q, kcache, vcache, dst, partial, numHeads, numKvHeads, headDim, startPos, splitLen, splits, scale, roundP);
}

// The same over an f32 cache (full-precision mode); every prefill and decode of that mode runs here.
extern "C" __global__ void __launch_bounds__(128) attention_split_f32(
    const float* q, const float* kcache, const float* vcache, float* dst, float* partial,
    int numHeads, int numKvHeads, int headDim, int startPos, int splitLen, int splits, float scale, int roundP)
{
    attention_split(q, kcache, vcache, dst, partial, numHeads, numKvHeads, headDim, startPos, splitLen, splits, scale, roundP);
}

// One block per (head, query): dst = sum_s acc_s * exp(m_s - M) / sum_s l_s * exp(m_s - M).
extern "C" __global__ void attention_combine(const float* partial, float* dst, int numHeads, int headDim, int splits)
{
    int h = blockIdx.x, t = blockIdx.y;
    const float* in = partial + ((i64)t * numHeads + h) * splits * (headDim + 2);
    float mAll = NEG_INF;
    for (int s = 0; s < splits; s++)
    {
        float ms = in[s * (headDim + 2)];
        mAll = ms > mAll || ms != ms ? ms : mAll;
    }
    float lAll = 0.0f;
    for (int s = 0; s < splits; s++)
    {
        float ms = in[s * (headDim + 2)], ls = in[s * (headDim + 2) + 1];
        if (!(ls == 0.0f && ms == NEG_INF)) lAll += ls * expf(ms - mAll);
    }
    float* out = dst + ((i64)t * numHeads + h) * headDim;
    for (int d = threadIdx.x; d < headDim; d += blockDim.x)
    {
        float a = 0.0f;
        for (int s = 0; s < splits; s++)
        {
            float ms = in[s * (headDim + 2)], ls = in[s * (headDim + 2) + 1];
            if (!(ls == 0.0f && ms == NEG_INF)) a += in[s * (headDim + 2) + 2 + d] * expf(ms - mAll);
        }
        out[d] = a / lAll;
    }
}

// Grid (numKvHeads, T, splits), 128 threads; group = numHeads / numKvHeads <= 8, headDim <= 128 and a multiple of 8.
// Per 64-key tile: stage K and V; scores s[g][j] = q_g . k_j * scale; per head an online-softmax update (running
// max and sum in shared memory); then each thread updates its (head, dim) outputs. Output as attention_split_bf16.
extern "C" __global__ void __launch_bounds__(128) attention_tiled_bf16(
    const float* q, const bf16* kcache, const bf16* vcache, float* dst, float* partial,
    int numHeads, int numKvHeads, int headDim, int startPos, int splitLen, int splits, float scale, int roundP)
{
    __shared__ __align__(16) bf16 ks[TILE_KEYS][TILE_ROW];
    __shared__ __align__(16) bf16 vs[TILE_KEYS][TILE_ROW];
    __shared__ float qs[TILE_MAX_GROUP][TILE_MAX_HEAD_DIM];
    __shared__ float ps[TILE_MAX_GROUP][TILE_KEYS];
    __shared__ float mrun[TILE_MAX_GROUP], lrun[TILE_MAX_GROUP], corr[TILE_MAX_GROUP];
    int kvh = blockIdx.x, t = blockIdx.y, s = blockIdx.z, tid = threadIdx.x;
    int lane = tid & 31, warp = tid >> 5;
    int group = numHeads / numKvHeads, kvDim = numKvHeads * headDim, chunks = headDim / 8;
    int len = startPos + t + 1, begin = s * splitLen, end = min(len, begin + splitLen);
    const float* qr = q + ((i64)t * numHeads + (i64)kvh * group) * headDim;
    for (int i = tid; i < group * headDim; i += 128) qs[i / headDim][i % headDim] = qr[i] * scale;
    if (tid < TILE_MAX_GROUP) { mrun[tid] = NEG_INF; lrun[tid] = 0.0f; }
    float acc[TILE_MAX_GROUP];   // outputs o = tid + 128 * i, as (head o / headDim, dim o % headDim)
#pragma unroll
    for (int i = 0; i < TILE_MAX_GROUP; i++) acc[i] = 0.0f;
    const bf16* kbase = kcache + (i64)kvh * headDim;
    const bf16* vbase = vcache + (i64)kvh * headDim;
    for (int k0 = begin; k0 < end; k0 += TILE_KEYS)
    {
        int n = min(TILE_KEYS, end - k0);
        __syncthreads();   // previous tile fully consumed (and q, stats initialised)
        for (int c = tid; c < n * chunks; c += 128)
        {
            int j = c / chunks, d = (c % chunks) * 8;
            i64 off = (i64)(k0 + j) * kvDim + d;
            *(uint4*)&ks[j][d] = *(const uint4*)(kbase + off);
            *(uint4*)&vs[j][d] = *(const uint4*)(vbase + off);
        }
        __syncthreads();
        for (int idx = tid; idx < group * TILE_KEYS; idx += 128)
        {
            int g = idx / TILE_KEYS, j = idx % TILE_KEYS;
            float sc = NEG_INF;
            if (j < n)
            {
                sc = 0.0f;
                const u32* kr = (const u32*)&ks[j][0];
                for (int d2 = 0; d2 < headDim / 2; d2++)
                {
                    u32 kk = kr[d2];
                    sc += qs[g][2 * d2] * __uint_as_float(kk << 16) + qs[g][2 * d2 + 1] * __uint_as_float(kk & 0xffff0000u);
                }
            }
            ps[g][j] = sc;
        }
        __syncthreads();
        for (int g = warp; g < group; g += 4)
        {
            float a = ps[g][lane], b = ps[g][lane + 32];
            float tmax = warp_max(fmaxf(a, b));
            float mold = mrun[g];
            float mnew = fmaxf(mold, tmax);
            float ea = expf(a - mnew), eb = expf(b - mnew);
            float sum = warp_sum(ea + eb);
            ps[g][lane] = roundP ? round_bf16(ea) : ea;
            ps[g][lane + 32] = roundP ? round_bf16(eb) : eb;
            if (lane == 0)
            {
                float cr = mold == NEG_INF ? 0.0f : expf(mold - mnew);
                corr[g] = cr;
                lrun[g] = lrun[g] * cr + sum;
                mrun[g] = mnew;
            }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < TILE_MAX_GROUP; i++)
        {
            int o = tid + 128 * i, g = o / headDim, d = o % headDim;
            if (g < group)
            {
                float a = acc[i] * corr[g];
                for (int j = 0; j < n; j++) a += ps[g][j] * bf16_to_f32(vs[j][d]);
                acc[i] = a;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < TILE_MAX_GROUP; i++)
    {
        int o = tid + 128 * i, g = o / headDim, d = o % headDim;
        if (g >= group) continue;
        int h = kvh * group + g;
        if (splits == 1) dst[((i64)t * numHeads + h) * headDim + d] = acc[i] / lrun[g];
        else
        {
            float* out = partial + (((i64)t * numHeads + h) * splits + s) * (headDim + 2);
            if (d == 0) { out[0] = mrun[g]; out[1] = lrun[g]; }
            out[2 + d] = acc[i];
        }
    }
}

// Grid (ceil(T / 64), numHeads), 128 threads; kcache/vcache point at the layer's first row.
extern "C" __global__ void __launch_bounds__(128) attention_flash_hd64_bf16(const float* q, const bf16* kcache,
    const bf16* vcache, float* dst, int T, int numHeads, int numKvHeads, int startPos, float scaleLog2)
{
    flash_attention<64, 4>(q, kcache, vcache, dst, T, numHeads, numKvHeads, startPos, scaleLog2);
}

// Three 4-warp blocks per SM (registers capped at 168, no spills): the default prefill kernel for head dim 128.
extern "C" __global__ void __launch_bounds__(128, 3) attention_flash_hd128_bf16(const float* q, const bf16* kcache,
    const bf16* vcache, float* dst, int T, int numHeads, int numKvHeads, int startPos, float scaleLog2)
{
    flash_attention<128, 4>(q, kcache, vcache, dst, T, numHeads, numKvHeads, startPos, scaleLog2);
}

// Grid (ceil(T / 128), numHeads), 256 threads: 128 queries share each K/V tile (half the cache reads per query).
extern "C" __global__ void __launch_bounds__(256) attention_flash_q128_hd64_bf16(const float* q, const bf16* kcache,
    const bf16* vcache, float* dst, int T, int numHeads, int numKvHeads, int startPos, float scaleLog2)
{
    flash_attention<64, 8>(q, kcache, vcache, dst, T, numHeads, numKvHeads, startPos, scaleLog2);
}

extern "C" __global__ void __launch_bounds__(256) attention_flash_q128_hd128_bf16(const float* q, const bf16* kcache,
    const bf16* vcache, float* dst, int T, int numHeads, int numKvHeads, int startPos, float scaleLog2)
{
    flash_attention<128, 8>(q, kcache, vcache, dst, T, numHeads, numKvHeads, startPos, scaleLog2);
}

// Causal grouped-query attention over the bf16 KV cache (CpuOps.Attention); softmax scale 1/sqrt(headDim).
// attention_split_bf16: one block per (head, query, key split); 4 warps stride over the split's keys with an
// online softmax (running max m, sum l, weighted values acc); then the warps merge in shared memory. With one
// split the block writes dst; with several (decode, long contexts) it writes (m, l, acc) and attention_combine
// merges the splits. Exercised by tests/BackendOpsTests.cs Attention.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_MAX_HEAD_DIM 256
#define ATT_PER_LANE (ATT_MAX_HEAD_DIM / 32)

// kernels

// q [T, numHeads*headDim]; kcache/vcache rows [layerRow0 + p, numKvHeads*headDim]; query t sees p <= startPos + t.
// partial [T, numHeads, splits, headDim + 2] holds m, l, acc[headDim] per split when splits > 1.
extern "C" __global__ void __launch_bounds__(128) attention_split_bf16(
    const float* q, const bf16* kcache, const bf16* vcache, float* dst, float* partial,
    int numHeads, int numKvHeads, int headDim, int startPos, int splitLen, int splits, float scale)
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
        const bf16* kr = kcache + (i64)p * kvDim + kvh * headDim;
        const bf16* vr = vcache + (i64)p * kvDim + kvh * headDim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++)
        {
            int d = lane + 32 * i;
            if (d < headDim) dot += qv[i] * bf16_to_f32(kr[d]);
        }
        dot = warp_sum(dot) * scale;
        float mn = m > dot ? m : dot;   // NaN in dot propagates
        float corr = expf(m - mn), e = expf(dot - mn);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++)
        {
            int d = lane + 32 * i;
            if (d < headDim) acc[i] = acc[i] * corr + e * bf16_to_f32(vr[d]);
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

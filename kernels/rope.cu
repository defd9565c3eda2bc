// Fused rotary embedding (CpuOps.Rope): rotates q and k in place by angle pos * invFreq[j] on pairs
// (x[j], x[j + rotaryDim/2]), cos/sin times magnitude, q times the query scale of (layer, pos); stores k and v as
// the cache's type (bf16, or f32 in full-precision mode) into the KV cache rows cacheRow0 + t. rope_cbf16_f32 computes as apply_rotary_pos_emb in bf16: cos and sin
// rounded to bf16, every product and every sum (and the query-scaled q) rounded too. rerotate_bf16 moves cached keys
// from one table to another. Exercised by tests/BackendOpsTests.cs Rope (f32 and bf16 compute) and Rerotate.
#include "common.cuh"

// One block per token t; threads stride over (head, pair) items and pass-through dims beyond rotaryDim.
template <bool R, typename C>
__device__ __forceinline__ void rope(float* q, float* k, const float* v, C* kcache, C* vcache, const float* invFreq,
    int numHeads, int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0,
    float magnitude, float queryScaleContext, int queryScaleOn)
{
    int t = blockIdx.x, pos = startPos + t, half = rotaryDim / 2, rest = headDim - rotaryDim;
    float qs = queryScaleOn ? fmaxf(1.0f, logf((float)(pos + 1)) / logf(queryScaleContext)) : 1.0f;
    int perHead = half + rest;
    float* qr = q + (i64)t * numHeads * headDim;
    for (int e = threadIdx.x; e < numHeads * perHead; e += blockDim.x)
    {
        int hh = e / perHead, j = e % perHead;
        float* x = qr + hh * headDim;
        if (j < half)
        {
            float sn, cs;
            sincosf((float)pos * invFreq[j], &sn, &cs);
            cs = round_c<R>(cs * magnitude); sn = round_c<R>(sn * magnitude);
            float x0 = x[j], x1 = x[j + half];
            float y0 = round_c<R>(round_c<R>(x0 * cs) - round_c<R>(x1 * sn));
            float y1 = round_c<R>(round_c<R>(x1 * cs) + round_c<R>(x0 * sn));
            x[j] = R && !queryScaleOn ? y0 : round_c<R>(y0 * qs);
            x[j + half] = R && !queryScaleOn ? y1 : round_c<R>(y1 * qs);
        }
        else
        {
            int d = rotaryDim + (j - half);
            if (!R || queryScaleOn) x[d] = round_c<R>(x[d] * qs);
        }
    }
    int kvDim = numKvHeads * headDim;
    float* kr = k + (i64)t * kvDim;
    C* kc = kcache + (i64)(cacheRow0 + t) * kvDim;
    for (int e = threadIdx.x; e < numKvHeads * perHead; e += blockDim.x)
    {
        int hh = e / perHead, j = e % perHead, o = hh * headDim;
        if (j < half)
        {
            float sn, cs;
            sincosf((float)pos * invFreq[j], &sn, &cs);
            cs = round_c<R>(cs * magnitude); sn = round_c<R>(sn * magnitude);
            float x0 = kr[o + j], x1 = kr[o + j + half];
            float y0 = round_c<R>(round_c<R>(x0 * cs) - round_c<R>(x1 * sn));
            float y1 = round_c<R>(round_c<R>(x1 * cs) + round_c<R>(x0 * sn));
            kr[o + j] = y0; kr[o + j + half] = y1;
            store_kv(kc + o + j, y0); store_kv(kc + o + j + half, y1);
        }
        else
        {
            int d = o + rotaryDim + (j - half);
            store_kv(kc + d, kr[d]);
        }
    }
    const float* vr = v + (i64)t * kvDim;
    C* vc = vcache + (i64)(cacheRow0 + t) * kvDim;
    for (int d = threadIdx.x; d < kvDim; d += blockDim.x) store_kv(vc + d, vr[d]);
}

// kernels: rope_{f32,cbf16_f32} write a bf16 cache, the _cf32 variants an f32 cache.

extern "C" __global__ void rope_f32(float* q, float* k, const float* v, bf16* kcache, bf16* vcache, const float* invFreq,
    int numHeads, int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0,
    float magnitude, float queryScaleContext, int queryScaleOn)
{
    rope<false>(q, k, v, kcache, vcache, invFreq, numHeads, numKvHeads, headDim, rotaryDim, startPos, cacheRow0,
        magnitude, queryScaleContext, queryScaleOn);
}

extern "C" __global__ void rope_cbf16_f32(float* q, float* k, const float* v, bf16* kcache, bf16* vcache, const float* invFreq,
    int numHeads, int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0,
    float magnitude, float queryScaleContext, int queryScaleOn)
{
    rope<true>(q, k, v, kcache, vcache, invFreq, numHeads, numKvHeads, headDim, rotaryDim, startPos, cacheRow0,
        magnitude, queryScaleContext, queryScaleOn);
}

extern "C" __global__ void rope_f32_cf32(float* q, float* k, const float* v, float* kcache, float* vcache, const float* invFreq,
    int numHeads, int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0,
    float magnitude, float queryScaleContext, int queryScaleOn)
{
    rope<false>(q, k, v, kcache, vcache, invFreq, numHeads, numKvHeads, headDim, rotaryDim, startPos, cacheRow0,
        magnitude, queryScaleContext, queryScaleOn);
}

extern "C" __global__ void rope_cbf16_f32_cf32(float* q, float* k, const float* v, float* kcache, float* vcache, const float* invFreq,
    int numHeads, int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0,
    float magnitude, float queryScaleContext, int queryScaleOn)
{
    rope<true>(q, k, v, kcache, vcache, invFreq, numHeads, numKvHeads, headDim, rotaryDim, startPos, cacheRow0,
        magnitude, queryScaleContext, queryScaleOn);
}

// Grid (length, numLayers): key at position p of every layer goes from rotation p*from (magnitude magFrom)
// to rotation p*to (magnitude magTo): undo the old rotation, apply the new one.
template <typename C>
__device__ __forceinline__ void rerotate(C* kcache, const float* invFrom, const float* invTo,
    int maxSeq, int numKvHeads, int headDim, int rotaryDim, float magFrom, float magTo)
{
    int p = blockIdx.x, layer = blockIdx.y, half = rotaryDim / 2, kvDim = numKvHeads * headDim;
    C* kr = kcache + ((i64)layer * maxSeq + p) * kvDim;
    for (int e = threadIdx.x; e < numKvHeads * half; e += blockDim.x)
    {
        int hh = e / half, j = e % half, o = hh * headDim;
        float sf, cf, st, ct;
        sincosf((float)p * invFrom[j], &sf, &cf);
        sincosf((float)p * invTo[j], &st, &ct);
        float x0 = load_kv(kr + o + j) / magFrom, x1 = load_kv(kr + o + j + half) / magFrom;
        float y0 = x0 * cf + x1 * sf, y1 = x1 * cf - x0 * sf;
        ct *= magTo; st *= magTo;
        store_kv(kr + o + j, y0 * ct - y1 * st);
        store_kv(kr + o + j + half, y1 * ct + y0 * st);
    }
}

extern "C" __global__ void rerotate_bf16(bf16* kcache, const float* invFrom, const float* invTo,
    int maxSeq, int numKvHeads, int headDim, int rotaryDim, float magFrom, float magTo)
{
    rerotate(kcache, invFrom, invTo, maxSeq, numKvHeads, headDim, rotaryDim, magFrom, magTo);
}

extern "C" __global__ void rerotate_f32(float* kcache, const float* invFrom, const float* invTo,
    int maxSeq, int numKvHeads, int headDim, int rotaryDim, float magFrom, float magTo)
{
    rerotate(kcache, invFrom, invTo, maxSeq, numKvHeads, headDim, rotaryDim, magFrom, magTo);
}

// RMSNorm: dst[r, :] = x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps)) * weight, one block per row (CpuOps.RmsNorm).
// The sum of squares is accumulated in f32 per thread, then reduced over the block. dst may alias x.
// Rows of n % 4 == 0 with 16-byte aligned pointers take float4 loads and stores. rmsnorm_cbf16_f32 computes as
// LlamaRMSNorm in bf16: x * rsqrt(...) is rounded to bf16, then the product with the weight is rounded again.
// Exercised by tests/BackendOpsTests.cs RmsNorm (f32 and bf16 compute cases).
#include "common.cuh"

template <bool R>
__device__ __forceinline__ float rms_out(float x, float r, float w) { return round_c<R>(round_c<R>(x * r) * w); }

template <bool R>
__device__ __forceinline__ void rmsnorm(const float* x, const float* weight, float* dst, int n, float eps)
{
    const float* xr = x + (i64)blockIdx.x * n;
    float* out = dst + (i64)blockIdx.x * n;
    if ((n & 3) == 0 && (((unsigned long long)xr | (unsigned long long)out | (unsigned long long)weight) & 15) == 0)
    {
        const float4* x4 = (const float4*)xr;
        const float4* w4 = (const float4*)weight;
        float4* o4 = (float4*)out;
        int n4 = n >> 2;
        float ss4 = 0.0f;
        for (int i = threadIdx.x; i < n4; i += blockDim.x)
        {
            float4 v = x4[i];
            ss4 += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        ss4 = block_sum(ss4);
        float r4 = 1.0f / sqrtf(ss4 / (float)n + eps);
        for (int i = threadIdx.x; i < n4; i += blockDim.x)
        {
            float4 v = x4[i], w = w4[i];
            float4 o = {rms_out<R>(v.x, r4, w.x), rms_out<R>(v.y, r4, w.y), rms_out<R>(v.z, r4, w.z), rms_out<R>(v.w, r4, w.w)};
            o4[i] = o;
        }
        return;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = rms_out<R>(xr[i], r, weight[i]);
}

// kernels

extern "C" __global__ void rmsnorm_f32(const float* x, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<false>(x, weight, dst, n, eps);
}

extern "C" __global__ void rmsnorm_cbf16_f32(const float* x, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<true>(x, weight, dst, n, eps);
}

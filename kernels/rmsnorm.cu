// RMSNorm: dst[r, :] = x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps)) * weight, one block per row (CpuOps.RmsNorm).
// The sum of squares is accumulated in f32 per thread, then reduced over the block. dst may alias x.
// Rows of n % 4 == 0 with 16-byte aligned pointers take float4 loads and stores. rmsnorm_cbf16_f32 computes as
// LlamaRMSNorm in bf16: x * rsqrt(...) is rounded to bf16, then the product with the weight is rounded again.
// add_rmsnorm_*: the residual add fused in front: x += y (rounded to bf16 in the cbf16 variant, as a bf16 residual
// stream is), then dst = rmsnorm(x); dst may alias y. The same values as add_f32 (+ round) then rmsnorm, one launch.
// Exercised by tests/BackendOpsTests.cs RmsNorm and AddRmsNorm (f32 and bf16 compute cases).
#include "common.cuh"

template <bool R>
__device__ __forceinline__ float rms_out(float x, float r, float w) { return round_c<R>(round_c<R>(x * r) * w); }

// x + y as the residual stream stores it (ADD), or x itself.
template <bool R, bool ADD>
__device__ __forceinline__ float residual(float x, float y) { return ADD ? round_c<R>(x + y) : x; }

template <bool R, bool ADD>
__device__ __forceinline__ void rmsnorm(float* x, const float* y, const float* weight, float* dst, int n, float eps)
{
    float* xr = x + (i64)blockIdx.x * n;
    const float* yr = ADD ? y + (i64)blockIdx.x * n : xr;
    float* out = dst + (i64)blockIdx.x * n;
    if ((n & 3) == 0 && (((unsigned long long)xr | (unsigned long long)yr | (unsigned long long)out | (unsigned long long)weight) & 15) == 0)
    {
        float4* x4 = (float4*)xr;
        const float4* y4 = (const float4*)yr;
        const float4* w4 = (const float4*)weight;
        float4* o4 = (float4*)out;
        int n4 = n >> 2;
        float ss4 = 0.0f;
        for (int i = threadIdx.x; i < n4; i += blockDim.x)
        {
            float4 v = x4[i];
            if (ADD)
            {
                float4 a = y4[i];
                v = make_float4(residual<R, ADD>(v.x, a.x), residual<R, ADD>(v.y, a.y), residual<R, ADD>(v.z, a.z), residual<R, ADD>(v.w, a.w));
                x4[i] = v;
            }
            ss4 += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        ss4 = block_sum(ss4);   // also orders every read of y before the writes of dst below
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
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        float v = residual<R, ADD>(xr[i], yr[i]);
        if (ADD) xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = rms_out<R>(xr[i], r, weight[i]);
}

// kernels

extern "C" __global__ void rmsnorm_f32(const float* x, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<false, false>((float*)x, nullptr, weight, dst, n, eps);
}

extern "C" __global__ void rmsnorm_cbf16_f32(const float* x, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<true, false>((float*)x, nullptr, weight, dst, n, eps);
}

extern "C" __global__ void add_rmsnorm_f32(float* x, const float* y, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<false, true>(x, y, weight, dst, n, eps);
}

extern "C" __global__ void add_rmsnorm_cbf16_f32(float* x, const float* y, const float* weight, float* dst, int n, float eps)
{
    rmsnorm<true, true>(x, y, weight, dst, n, eps);
}

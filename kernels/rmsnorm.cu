// RMSNorm: dst[r, :] = x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps)) * weight, one block per row (CpuOps.RmsNorm).
// The sum of squares is accumulated in f32 per thread, then reduced over the block. dst may alias x.
// Exercised by tests/BackendOpsTests.cs RmsNorm.
#include "common.cuh"

// kernels

extern "C" __global__ void rmsnorm_f32(const float* x, const float* weight, float* dst, int n, float eps)
{
    const float* xr = x + (i64)blockIdx.x * n;
    float* out = dst + (i64)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = xr[i] * r * weight[i];
}

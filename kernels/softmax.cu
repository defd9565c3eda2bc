// Row reductions over logits: argmax (index of the largest element, first on ties, NaN counts as largest).
// One block per row; each thread keeps its best (value, index), then warp and block reductions (CpuOps.Softmax).
// Exercised by tests/BackendOpsTests.cs Argmax.
#include "common.cuh"

__device__ __forceinline__ bool argmax_better(float a, int ia, float b, int ib)
{
    bool na = a != a, nb = b != b;
    if (na || nb) return na && (!nb || ia < ib);
    return a > b || (a == b && ia < ib);
}

// kernels

extern "C" __global__ void argmax_f32(const float* x, int* dst, int cols)
{
    __shared__ float bestValue[32];
    __shared__ int bestIndex[32];
    const float* xr = x + (i64)blockIdx.x * cols;
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        if (argmax_better(xr[i], i, v, idx)) { v = xr[i]; idx = i; }
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (argmax_better(ov, oi, v, idx)) { v = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bestValue[warp] = v; bestIndex[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (argmax_better(bestValue[w], bestIndex[w], v, idx)) { v = bestValue[w]; idx = bestIndex[w]; }
        dst[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
    }
}

// Element-wise activations: swiglu (dst = silu(gate) * up) and add (dst = x + y) (CpuOps.Activation).
// Grid-stride loops over n elements; dst may alias an input.
// Exercised by tests/BackendOpsTests.cs SwiGlu and Add.
#include "common.cuh"

// kernels

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        dst[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_f32(const float* x, const float* y, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = x[i] + y[i];
}

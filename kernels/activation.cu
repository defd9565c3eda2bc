// Element-wise ops: swiglu (dst = silu(gate) * up), add (dst = x + y) (CpuOps.Activation), and the in-place
// rounding of f32 activations to bf16 / f16 values (CpuOps.Round). Grid-stride loops over n elements; dst may alias
// an input. swiglu_cbf16_f32 rounds silu(gate) and the product to bf16, as torch's silu and mul do in bf16.
// Exercised by tests/BackendOpsTests.cs SwiGlu, Add and Round.
#include "common.cuh"

template <bool R>
__device__ __forceinline__ void swiglu(const float* gate, const float* up, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        dst[i] = round_c<R>(round_c<R>(g / (1.0f + expf(-g))) * up[i]);
    }
}

// kernels

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* dst, i64 n)
{
    swiglu<false>(gate, up, dst, n);
}

extern "C" __global__ void swiglu_cbf16_f32(const float* gate, const float* up, float* dst, i64 n)
{
    swiglu<true>(gate, up, dst, n);
}

extern "C" __global__ void add_f32(const float* x, const float* y, float* dst, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = x[i] + y[i];
}

// x[i] = (float)(bf16)x[i], round to nearest even, NaN kept quiet (DTypes.F32ToBF16).
extern "C" __global__ void round_bf16_f32(float* x, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = round_bf16(x[i]);
}

// x[i] = (float)(half)x[i], round to nearest even, overflow to infinity (System.Half).
extern "C" __global__ void round_f16_f32(float* x, i64 n)
{
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = round_f16(x[i]);
}

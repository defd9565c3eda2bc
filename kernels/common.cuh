// Helpers shared by every kernel file: bf16/f16 conversions by bit operations and PTX, warp and block reductions.
// NVRTC receives this as the header "common.cuh"; no CUDA toolkit header is used, so NVRTC 11.8 to 13 compile it alike.
// Exercised through every kernel by tests/BackendOpsTests.cs (GPU) and tests/CudaCompileTests.cs (NVRTC only).
#pragma once

typedef unsigned short bf16;   // raw bfloat16 bits
typedef unsigned short f16;    // raw IEEE half bits
typedef unsigned int u32;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16 b) { return __uint_as_float(((u32)b) << 16); }

// Round to nearest even, NaN kept quiet: bit-identical to DTypes.F32ToBF16 on the CPU.
__device__ __forceinline__ bf16 f32_to_bf16(float f)
{
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Two floats to one bf16x2 word, the lower index in the low half (the mma operand layout): one conversion
// instruction, round to nearest even as f32_to_bf16 (NaN becomes the canonical quiet NaN).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi)
{
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float f16_to_f32(f16 h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even f16 (IEEE: overflow to inf, subnormals kept), as System.Half does.
__device__ __forceinline__ f16 f32_to_f16(float f)
{
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// f32 value rounded to the nearest bf16 / f16 value (a framework computing in that type stores this).
__device__ __forceinline__ float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }
__device__ __forceinline__ float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

// KV-cache element access: bf16 (the default cache) or f32 (full-precision mode), one template for both.
__device__ __forceinline__ float load_kv(const bf16* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ float load_kv(const float* p) { return *p; }
__device__ __forceinline__ void store_kv(bf16* p, float v) { *p = f32_to_bf16(v); }
__device__ __forceinline__ void store_kv(float* p, float v) { *p = v; }

// Rounding of an op's intermediate to its compute type: R = true emulates bf16 compute, false keeps f32.
template <bool R>
__device__ __forceinline__ float round_c(float f) { return R ? round_bf16(f) : f; }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

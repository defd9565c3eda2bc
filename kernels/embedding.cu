// Embedding lookup: dst[t, :] = table[tokens[t], :] as f32, for f32, f16 and bf16 tables (CpuOps.Embedding).
// Grid (column blocks, token blocks), grid-stride over tokens; token ids were range-checked on the host.
// Exercised by tests/BackendOpsTests.cs Embedding.
#include "common.cuh"

// kernels

extern "C" __global__ void embedding_f32(const int* tokens, const float* table, float* dst, int numTokens, int hidden)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= hidden) return;
    for (int t = blockIdx.y; t < numTokens; t += gridDim.y)
        dst[(i64)t * hidden + i] = table[(i64)tokens[t] * hidden + i];
}

extern "C" __global__ void embedding_f16(const int* tokens, const f16* table, float* dst, int numTokens, int hidden)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= hidden) return;
    for (int t = blockIdx.y; t < numTokens; t += gridDim.y)
        dst[(i64)t * hidden + i] = f16_to_f32(table[(i64)tokens[t] * hidden + i]);
}

extern "C" __global__ void embedding_bf16(const int* tokens, const bf16* table, float* dst, int numTokens, int hidden)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= hidden) return;
    for (int t = blockIdx.y; t < numTokens; t += gridDim.y)
        dst[(i64)t * hidden + i] = bf16_to_f32(table[(i64)tokens[t] * hidden + i]);
}

// Fast approximations for softmax weights, where a relative error of 2^-22 is far below what bf16 operands keep:
// 2^x by the hardware ex2 with subnormal results flushed to zero (one instruction on CUDA; the non-flushing form
// costs three more). Exercised by the attention cases of tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU.Algorithms;
using ILGPU.Runtime.Cuda;

namespace LlamaRun.Kernels.Device;

public static class FastMath
{
    /// <summary>2^x, flushing subnormal results to zero; 2^-inf = 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp2(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("ex2.approx.ftz.f32 %0, %1;", out float y, x);
            return y;
        }
        return XMath.Exp2(x);
    }
}

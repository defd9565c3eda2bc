// The matmul op case: x [T, in] times a weight [out, in] (f32, f16 or bf16) transposed: GEMV for a few tokens, the
// tensor-core GEMM (or cuBLAS) for prefill. Kernel: kernels/MatMul.cs; CPU: Cpu/CpuOps.MatMul.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record MatMulCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.F32;
    public int T { get; init; } = 1;

    /// <summary>Input features (the weight's columns).</summary>
    public int N { get; init; } = 1;

    /// <summary>Output features (the weight's rows).</summary>
    public int Out { get; init; } = 1;

    public override string Op => "matmul";
    protected override string Shape => $"{Weight.Name()} T={T} in={N} out={Out}";
    public override long Bytes(int kvElementSize) => (long)Out * N * Weight.Size() + (long)T * (N + Out) * 4;
    public override double Flops => 2.0 * T * N * Out;
    public override long Work => (long)T * N * Out;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform((long)T * N, Compute);
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, T, N, xs);
        var weights = Sets(copies, () => s.Random(Weight, Out, N, Compute));
        var dst = s.Output(T, Out, "dst");
        return new(i => s.Backend.MatMul(x, weights[i % weights.Length], dst), s.Out("dst", dst));
    }
}

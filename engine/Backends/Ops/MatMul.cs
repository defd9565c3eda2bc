// The matmul op cases: x [T, in] times a weight [out, in] (f32, f16 or bf16) transposed: GEMV for a few tokens, the
// tensor-core GEMM (or cuBLAS) for prefill; and matmul_swiglu, the MLP's stacked gate/up projection with SwiGlu as its
// epilogue (one fused GEMV for a bf16 token). Kernel: kernels/MatMul.cs; CPU: Cpu/CpuOps.MatMul.cs.
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

public sealed record MatMulSwiGluCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.BF16;
    public int T { get; init; } = 1;

    /// <summary>Input features.</summary>
    public int N { get; init; } = 1;

    /// <summary>FFN features: the weight is [2 Ff, N] (gate rows, then up rows), the output [T, Ff].</summary>
    public int Ff { get; init; } = 1;

    public override string Op => "matmul_swiglu";
    protected override string Shape => $"{Weight.Name()} T={T} in={N} ff={Ff}";
    public override long Bytes(int kvElementSize) => 2L * Ff * N * Weight.Size() + (long)T * (N + Ff) * 4;
    public override double Flops => 4.0 * T * N * Ff;
    public override long Work => 2L * T * N * Ff;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform((long)T * N, Compute);
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, T, N, xs);
        var weights = Sets(copies, () => s.Random(Weight, 2 * Ff, N, Compute));
        var dst = s.Output(T, Ff, "dst");
        return new(i => s.Backend.MatMulSwiGlu(x, weights[i % weights.Length], dst), s.Out("dst", dst));
    }
}

public sealed record MatMulAddRmsNormCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.BF16;
    public int T { get; init; } = 1;

    /// <summary>Input features (the weight's columns).</summary>
    public int N { get; init; } = 1;

    /// <summary>Output features: the residual stream's width.</summary>
    public int Out { get; init; } = 1;

    public override string Op => "matmul_add_rmsnorm";
    protected override string Shape => $"{Weight.Name()} T={T} in={N} out={Out}";
    public override long Bytes(int kvElementSize) => (long)Out * N * Weight.Size() + (long)T * (N + 3L * Out) * 4 + Out * 4L;
    public override double Flops => 2.0 * T * N * Out;
    public override long Work => (long)T * N * Out;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform((long)T * N, Compute);
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, T, N, xs);
        var weights = Sets(copies, () => s.Random(Weight, Out, N, Compute));
        var residual = s.Upload(DType.F32, T, Out, s.Uniform((long)T * Out, Compute), guard: true, name: "residual");
        var norm = s.Upload(DType.F32, 1, Out, s.Uniform(Out, Compute));
        var dst = s.Output(T, Out, "dst");
        return new(i => s.Backend.MatMulAddRmsNorm(x, weights[i % weights.Length], residual, norm, dst, 1e-5f), s.Out("residual", residual), s.Out("dst", dst));
    }
}

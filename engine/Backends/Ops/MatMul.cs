// The matmul op cases: x [T, in] times a weight [out, in] (f32, f16 or bf16) transposed: GEMV for a few tokens, the
// tensor-core GEMM (or cuBLAS) for prefill; matmul_swiglu, the MLP's stacked gate/up projection with SwiGlu as its
// epilogue (a fused GEMV for a bf16 token). Kernel: kernels/MatMul.cs; CPU: Cpu/CpuOps.MatMul.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

/// <summary>What the matmul cases share: the weight type, the tokens and the input features; the weight has Rows rows.</summary>
public abstract record ProjectionCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.BF16;
    public int T { get; init; } = 1;

    /// <summary>Input features (the weight's columns).</summary>
    public int N { get; init; } = 1;

    /// <summary>The weight's rows.</summary>
    protected abstract int Rows { get; }

    public override double Flops => 2.0 * T * N * Rows;
    public override long Work => (long)T * N * Rows;

    /// <summary>The seeded input x [T, N] (NaN injected when Specials) and the weight sets, on s.Backend.</summary>
    protected (Tensor X, Tensor[] Weights) Inputs(OpScope s, int copies)
    {
        float[] xs = s.Uniform((long)T * N, Compute);
        if (Specials) InjectSpecials(xs, withInf: false);
        return (s.Upload(DType.F32, T, N, xs), Sets(copies, () => s.Random(Weight, Rows, N, Compute)));
    }
}

public sealed record MatMulCase(string Source, double MaxNmse) : ProjectionCase(Source, MaxNmse)
{
    /// <summary>Output features (the weight's rows).</summary>
    public int Out { get; init; } = 1;

    protected override int Rows => Out;
    public override string Op => "matmul";
    protected override string Shape => $"{Weight.Name()} T={T} in={N} out={Out}";
    public override long Bytes(int kvElementSize) => (long)Out * N * Weight.Size() + (long)T * (N + Out) * 4;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var (x, weights) = Inputs(s, copies);
        var dst = s.Output(T, Out, "dst");
        return new(i => s.Backend.MatMul(x, weights[i % weights.Length], dst), s.Out("dst", dst));
    }
}

public sealed record MatMulSwiGluCase(string Source, double MaxNmse) : ProjectionCase(Source, MaxNmse)
{
    /// <summary>FFN features: the weight is [2 Ff, N] (gate rows, then up rows), the output [T, Ff].</summary>
    public int Ff { get; init; } = 1;

    protected override int Rows => 2 * Ff;
    public override string Op => "matmul_swiglu";
    protected override string Shape => $"{Weight.Name()} T={T} in={N} ff={Ff}";
    public override long Bytes(int kvElementSize) => 2L * Ff * N * Weight.Size() + (long)T * (N + Ff) * 4;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var (x, weights) = Inputs(s, copies);
        var dst = s.Output(T, Ff, "dst");
        return new(i => s.Backend.MatMulSwiGlu(x, weights[i % weights.Length], dst), s.Out("dst", dst));
    }
}

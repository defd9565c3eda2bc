// The matmul op cases: x [T, in] times a weight [out, in] (f32, f16 or bf16) transposed: GEMV for a few tokens, the
// tensor-core GEMM (or cuBLAS) for prefill; matmul_swiglu, the MLP's stacked gate/up projection with SwiGlu as its
// epilogue (a fused GEMV for a bf16 token); matmul_add_rmsnorm, the o/down projection with the residual add and the
// next norm, whose scale a GPU leaves to the GEMV that reads its output (checked with each reader, and read back alone).
// Kernel: kernels/MatMul.cs; CPU: Cpu/CpuOps.MatMul.cs.
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

/// <summary>
/// What reads a matmul_add_rmsnorm case's output next: nothing, the gate/up GEMV with SwiGlu, the q/k/v GEMV with the
/// rotary op (the two that take a deferred norm), or an op that does not: a plain GEMV over Ff rows, or Add with the
/// residual (a backend that defers the norm settles it first).
/// </summary>
public enum NormReader
{
    None,
    SwiGlu,
    Rope,
    MatMul,
    Add,
}

/// <summary>
/// One token's o/down projection with the residual add and the next norm (bf16 weight [Out, N]), then its reader:
/// SwiGlu over a gate/up weight [2 Ff, Out], or the rotary projection of the case's heads (QDim + 2 KvDim rows).
/// Outputs: the residual, the reader's, and the normed row last (so that a deferred scale is read back after its reader).
/// </summary>
public sealed record MatMulAddRmsNormCase(string Source, double MaxNmse) : HeadsCase(Source, MaxNmse)
{
    /// <summary>Input features (the projection's columns).</summary>
    public int N { get; init; } = 64;

    /// <summary>Output features: the residual's width.</summary>
    public int Out { get; init; } = 64;

    public NormReader Then { get; init; }

    /// <summary>FFN features of the SwiGlu reader.</summary>
    public int Ff { get; init; } = 32;

    private int ReaderRows => Then switch { NormReader.SwiGlu => 2 * Ff, NormReader.Rope => QDim + 2 * KvDim, NormReader.MatMul => Ff, _ => 0 };
    public override string Op => "matmul_add_rmsnorm";
    protected override string Shape => $"bf16 in={N} out={Out} then " + Then switch
    {
        NormReader.SwiGlu => $"swiglu ff={Ff}",
        NormReader.Rope => "rope " + base.Shape,
        NormReader.MatMul => $"matmul out={Ff}",
        NormReader.Add => "add",
        _ => "nothing",
    };
    public override double Flops => 2.0 * ((long)N * Out + (long)ReaderRows * Out);
    public override long Work => (long)N * Out + (long)ReaderRows * Out;
    public override long Bytes(int kvElementSize) => ((long)Out * N + (long)ReaderRows * Out) * 2 + (N + 4L * Out + ReaderRows) * 4;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform(N);
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, 1, N, xs);
        var weights = Sets(copies, () => s.Random(DType.BF16, Out, N));
        var residual = s.Upload(DType.F32, 1, Out, s.Uniform(Out), guard: true, name: "residual");
        var normWeight = s.Upload(DType.F32, 1, Out, s.Uniform(Out));
        var normed = s.Output(1, Out, "normed");
        var b = s.Backend;
        // The fused op, then the reader; outputs: the residual, the reader's, and the normed row last.
        PreparedOp WithReader(Action read, params OpOutput[] readerOutputs) => new(i =>
        {
            b.MatMulAddRmsNorm(x, weights[i % weights.Length], residual, normWeight, normed, 1e-5f);
            read();
        }, [s.Out("residual", residual), .. readerOutputs, s.Out("normed", normed)]);
        switch (Then)
        {
            case NormReader.SwiGlu:
            {
                var gateUp = s.Random(DType.BF16, 2 * Ff, Out);
                var act = s.Output(1, Ff, "swiglu");
                return WithReader(() => b.MatMulSwiGlu(normed, gateUp, act), s.Out("swiglu", act));
            }
            case NormReader.Rope:
            {
                var cache = NewCache(s);
                var table = Table(Theta, Magnitude);
                var qkv = s.Random(DType.BF16, QDim + 2 * KvDim, Out);
                var dst = s.Output(1, QDim + 2 * KvDim, "qkv");
                return WithReader(() => b.MatMulRope(normed, qkv, dst, cache, Layer, StartPos, table),
                    s.Out("qkv", dst), s.Out("cache.K", cache.K), s.Out("cache.V", cache.V));
            }
            case NormReader.MatMul:
            {
                var w = s.Random(DType.BF16, Ff, Out);
                var y = s.Output(1, Ff, "matmul");
                return WithReader(() => b.MatMul(normed, w, y), s.Out("matmul", y));
            }
            case NormReader.Add:
            {
                var sum = s.Output(1, Out, "sum");
                return WithReader(() => b.Add(normed, residual, sum), s.Out("sum", sum));
            }
            default:
                return WithReader(() => { });
        }
    }
}

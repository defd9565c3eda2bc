// The element-wise op cases: swiglu (silu(gate) * up) and add (x + y, NaN and +Inf propagated).
// Kernel: kernels/Activation.cs; CPU: Cpu/CpuOps.Activation.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record SwiGluCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int N { get; init; } = 1;

    public override string Op => "swiglu";
    protected override string Shape => $"n={N}";
    public override long Bytes(int kvElementSize) => N * 12L;
    public override long Work => N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] gate = s.Uniform(N, Compute);
        if (Specials) InjectSpecials(gate, withInf: false);
        var g = s.Upload(DType.F32, 1, N, gate);
        var up = s.Upload(DType.F32, 1, N, s.Uniform(N, Compute));
        var dst = s.Output(1, N, "dst");
        return new(_ => s.Backend.SwiGlu(g, up, dst, Compute), s.Out("dst", dst));
    }
}

public sealed record AddCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int N { get; init; } = 1;

    public override string Op => "add";
    protected override string Shape => $"n={N}";
    public override long Bytes(int kvElementSize) => N * 12L;
    public override long Work => N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform(N, Compute);
        if (Specials) InjectSpecials(xs, withInf: true);
        var x = s.Upload(DType.F32, 1, N, xs);
        var y = s.Upload(DType.F32, 1, N, s.Uniform(N, Compute));
        var dst = s.Output(1, N, "dst");
        return new(_ => s.Backend.Add(x, y, dst), s.Out("dst", dst));
    }
}

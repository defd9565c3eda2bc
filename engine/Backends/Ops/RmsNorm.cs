// The RMSNorm op cases: rmsnorm, and add_rmsnorm (the residual add fused with the next norm, dst aliasing y as the
// forward pass calls it). Kernel: kernels/RmsNorm.cs; CPU: Cpu/CpuOps.RmsNorm.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record RmsNormCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int T { get; init; } = 1;
    public int N { get; init; } = 1;

    public override string Op => "rmsnorm";
    protected override string Shape => $"rows={T} n={N}";
    public override long Bytes(int kvElementSize) => (long)T * N * 8 + N * 4L;
    public override long Work => (long)T * N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var sets = Sets(copies, () =>
        {
            float[] x = s.Uniform((long)T * N, Compute);
            if (Specials) InjectSpecials(x, withInf: false);
            return s.Upload(DType.F32, T, N, x);
        });
        var w = s.Upload(DType.F32, 1, N, s.Uniform(N, Compute));
        var dst = s.Output(T, N, "dst");
        return new(i => s.Backend.RmsNorm(sets[i % sets.Length], w, dst, 1e-5f, Compute), s.Out("dst", dst));
    }
}

public sealed record AddRmsNormCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int T { get; init; } = 1;
    public int N { get; init; } = 1;

    public override string Op => "add_rmsnorm";
    protected override string Shape => $"rows={T} n={N}";
    public override long Bytes(int kvElementSize) => (long)T * N * 16 + N * 4L;
    public override long Work => (long)T * N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform((long)T * N, Compute);
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, T, N, xs, guard: true, name: "x");
        var y = s.Upload(DType.F32, T, N, s.Uniform((long)T * N, Compute), guard: true, name: "y");
        var w = s.Upload(DType.F32, 1, N, s.Uniform(N, Compute));
        return new(_ => s.Backend.AddRmsNorm(x, y, w, y, 1e-5f, Compute), s.Out("x", x), s.Out("dst", y));
    }
}

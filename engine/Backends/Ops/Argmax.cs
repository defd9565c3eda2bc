// The argmax op case: the index of each row's largest logit, with ties (the first index must win) and NaN rows
// (kernels/Argmax.cs ArgmaxRule: the first NaN wins). Must match exactly. CPU: Cpu/CpuOps.Softmax.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record ArgmaxCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int T { get; init; } = 1;
    public int N { get; init; } = 1;

    public override string Op => "argmax";
    protected override string Shape => $"rows={T} cols={N}";
    public override long Bytes(int kvElementSize) => (long)T * N * 4;
    public override long Work => (long)T * N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform((long)T * N);
        for (int r = 0; r < T; r++)
        {
            xs[r * N + (r * 7) % N] = 2f;   // a tie: the first index must win
            xs[r * N + N - 1] = 2f;
        }
        if (Specials) InjectSpecials(xs, withInf: false);
        var x = s.Upload(DType.F32, T, N, xs);
        var index = new int[T];
        return new(_ => s.Backend.Argmax(x, index), new OpOutput("index", () => [.. index.Select(i => (float)i)]));
    }
}

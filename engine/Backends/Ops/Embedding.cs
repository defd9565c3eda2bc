// The embedding op case: rows of a vocab x hidden table (f32, f16 or bf16) gathered to F32, the first and last ids included.
// Kernel: kernels/Embedding.cs; CPU: Cpu/CpuOps.Embedding.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record EmbeddingCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.F32;
    public int Vocab { get; init; } = 1;
    public int Hidden { get; init; } = 1;
    public int T { get; init; } = 1;

    public override string Op => "embedding";
    protected override string Shape => $"{Weight.Name()} vocab={Vocab} hidden={Hidden} T={T}";
    public override long Bytes(int kvElementSize) => (long)T * Hidden * (Weight.Size() + 4);
    public override long Work => (long)T * Hidden * Vocab;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        int[] tokens = [.. Enumerable.Range(0, T).Select(i => i == 0 ? Vocab - 1 : i == 1 ? 0 : s.NextInt(Vocab))];
        var tables = Sets(copies, () => s.Random(Weight, Vocab, Hidden, Compute));
        var dst = s.Output(T, Hidden, "dst");
        return new(i => s.Backend.Embedding(tokens, tables[i % tables.Length], dst), s.Out("dst", dst));
    }
}

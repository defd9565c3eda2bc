// The attention op case: causal grouped-query attention of T queries at positions StartPos.. over a filled cache:
// decode (T = 1, split-K), chunked and full prefill (flash), index remaps with their far branch.
// Kernels: kernels/Attention.cs, AttentionDecode.cs, AttentionFlash.cs; CPU: Cpu/CpuOps.Attention.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record AttentionCase(string Source, double MaxNmse) : HeadsCase(Source, MaxNmse)
{
    public override string Op => "attention";

    public override long Bytes(int kvElementSize) =>
        (long)Context * KvDim * (Remap is null ? 2 : 3) * kvElementSize + (long)T * QDim * (Remap is null ? 8 : 12);

    /// <summary>Causal: only the visible (query, key) pairs count.</summary>
    public override double Flops => 4.0 * Heads * HeadDim * (T * (double)StartPos + T * (T + 1) / 2.0);

    /// <summary>Fills layer 0 and positions before StartPos of layer 1 with seeded keys, then ropes the checked queries with their own keys.</summary>
    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var cache = NewCache(s);
        var table = Table(Theta, Magnitude);
        Fill(s, cache, 0, 0, Context, table);
        Fill(s, cache, Layer, 0, StartPos, table);
        var q = s.Random(DType.F32, T, QDim, Compute);
        var k = s.Random(DType.F32, T, KvDim, Compute);
        var v = s.Random(DType.F32, T, KvDim, Compute);
        var qFar = Remap is null ? null : s.Upload(DType.F32, T, QDim, []);
        s.Backend.Rope(q, k, v, cache, Layer, StartPos, table, Compute, qFar);
        FarQueries? far = qFar is null ? null : new FarQueries(qFar, Remap!.Window);
        var dst = s.Output(T, QDim, "dst");
        return new(_ => s.Backend.Attention(q, cache, Layer, StartPos, dst, Compute, far), s.Out("dst", dst));
    }
}

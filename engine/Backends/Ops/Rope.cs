// The rotary op cases: rope (q and k rotated in place by the whole RopeTable: per-pair frequencies, cos/sin magnitude,
// query scale, partial rotary, index remaps with their far queries and grouped keys; k and v appended to the cache)
// and rerotate (cached keys moved from one table to another, as dynamic NTK does); matmul_rope, decode's stacked q/k/v
// projection with the rotary op as its epilogue. Kernels: kernels/Rope.cs, kernels/MatMul.cs (GemvBf16Rope); CPU:
// Cpu/CpuOps.Rope.cs (matmul_rope: IBackend.MatMulThenRope, the projection then Rope).
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record RopeCase(string Source, double MaxNmse) : HeadsCase(Source, MaxNmse)
{
    public override string Op => "rope";

    public override long Bytes(int kvElementSize) =>
        T * ((long)QDim * 8 + KvDim * 12L + KvDim * 2L * kvElementSize + (Remap is null ? 0 : QDim * 4L + (long)KvDim * kvElementSize));

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var cache = NewCache(s);
        var table = Table(Theta, Magnitude);
        var q = s.Upload(DType.F32, T, QDim, s.Uniform((long)T * QDim, Compute), guard: true, name: "q");
        var k = s.Upload(DType.F32, T, KvDim, s.Uniform((long)T * KvDim, Compute), guard: true, name: "k");
        var v = s.Upload(DType.F32, T, KvDim, s.Uniform((long)T * KvDim, Compute));
        var qFar = Remap is null ? null : s.Output(T, QDim, "qFar");
        var outputs = new List<OpOutput> { s.Out("q", q), s.Out("k", k), s.Out("cache.K", cache.K), s.Out("cache.V", cache.V) };
        if (qFar is not null) outputs.AddRange([s.Out("qFar", qFar), s.Out("cache.KFar", cache.KFar!)]);
        return new(_ => s.Backend.Rope(q, k, v, cache, Layer, StartPos, table, Compute, qFar), [.. outputs]);
    }
}

/// <summary>matmul_rope: x [T, N] times the stacked q/k/v weight [qDim + 2 kvDim, N], then Rope of the q, k and v columns (decode's fused projection).</summary>
public sealed record MatMulRopeCase(string Source, double MaxNmse) : HeadsCase(Source, MaxNmse)
{
    public DType Weight { get; init; } = DType.BF16;

    /// <summary>Input features (the weight's columns).</summary>
    public int N { get; init; } = 64;

    private int Rows => QDim + 2 * KvDim;
    public override string Op => "matmul_rope";
    protected override string Shape => $"{Weight.Name()} in={N} " + base.Shape;
    public override double Flops => 2.0 * T * N * Rows;
    public override long Work => (long)T * N * Rows;
    public override long Bytes(int kvElementSize) => (long)Rows * N * Weight.Size() + (long)T * (N + Rows) * 4 + (long)T * KvDim * 2 * kvElementSize;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var cache = NewCache(s);
        var table = Table(Theta, Magnitude);
        var x = s.Upload(DType.F32, T, N, s.Uniform((long)T * N, Compute));
        var weights = Sets(copies, () => s.Random(Weight, Rows, N, Compute));
        var dst = s.Output(T, Rows, "dst");
        return new(i => s.Backend.MatMulRope(x, weights[i % weights.Length], dst, cache, Layer, StartPos, table),
            s.Out("dst", dst), s.Out("cache.K", cache.K), s.Out("cache.V", cache.V));
    }
}

public sealed record RerotateCase(string Source, double MaxNmse) : HeadsCase(Source, MaxNmse)
{
    public override string Op => "rerotate";
    public override long Bytes(int kvElementSize) => (long)T * KvDim * 2 * kvElementSize;

    /// <summary>Fills both layers' first T positions; launch 0 re-rotates them from theta to 4.5 theta (and 1.1 the magnitude), odd launches back.</summary>
    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        var cache = NewCache(s);
        var from = Table(Theta, Magnitude);
        var to = Table(Theta * 4.5f, Magnitude * 1.1f);
        for (int l = 0; l < cache.NumLayers; l++) Fill(s, cache, l, 0, Context, from);
        return new(i =>
        {
            bool forward = (i & 1) == 0;
            s.Backend.RerotateCache(cache, Context, forward ? from : to, forward ? to : from);
        }, s.Out("cache.K", cache.K));
    }
}

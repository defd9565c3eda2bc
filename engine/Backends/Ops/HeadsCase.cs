// What the rope, attention and rerotate op cases share: attention geometry (heads, KV heads, head and rotary dims),
// the position of the first token, the RoPE table the case builds (theta, magnitude, query scale, index remap), and
// filling a KV cache through Rope as a prefill would.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

/// <summary>An op case over attention heads: T tokens at positions StartPos.. of a 2-layer cache (layer 1 checked).</summary>
public abstract record HeadsCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    /// <summary>The cache layer the case checks; layer 0 holds other values, so a kernel reading the wrong layer fails.</summary>
    protected const int Layer = 1;

    public int T { get; init; } = 1;
    public int Heads { get; init; } = 1;
    public int KvHeads { get; init; } = 1;
    public int HeadDim { get; init; } = 64;

    /// <summary>Rotary dimensions (0: the whole head).</summary>
    public int RotaryDim { get; init; }

    public int StartPos { get; init; }
    public float Theta { get; init; } = 10000f;
    public float Magnitude { get; init; } = 1f;

    /// <summary>A log-n query scale (YaRN-style attention scaling) with context 4096.</summary>
    public bool QueryScale { get; init; }

    /// <summary>An index remap (Self-Extend, DPE, ReRoPE): far queries and grouped keys too.</summary>
    public RopeRemap? Remap { get; init; }

    public int Rot => RotaryDim == 0 ? HeadDim : RotaryDim;
    protected int QDim => Heads * HeadDim;
    protected int KvDim => KvHeads * HeadDim;
    protected int Context => StartPos + T;

    protected override string Shape =>
        $"T={T} heads={Heads}/{KvHeads} hd={HeadDim} rot={Rot} pos={StartPos} theta={F(Theta)} mag={F(Magnitude)}{(QueryScale ? " qscale" : "")}{(Remap is { } r ? " " + r.Describe() : "")}";

    public override long Work => T + (long)T * Context * Heads * HeadDim;

    /// <summary>Plain RoPE at theta over Rot dims, with the case's magnitude, query scale and remap.</summary>
    protected RopeTable Table(float theta, float magnitude)
    {
        int half = Rot / 2;
        var inv = new float[half];
        for (int j = 0; j < half; j++) inv[j] = (float)Math.Pow(theta, -2.0 * j / Rot);
        return new RopeTable
        {
            Method = "check", InvFreq = inv, Magnitude = magnitude,
            QueryScale = QueryScale ? new QueryScale(4096f, 0) : null, Remap = Remap,
        };
    }

    /// <summary>A 2-layer cache with 3 spare positions after Context (a kernel writing past its rows shows in them).</summary>
    protected KvCache NewCache(OpScope s) => s.Cache(2, Context + 3, KvHeads, HeadDim, farKeys: Remap is not null);

    /// <summary>Writes seeded keys and values of positions [from, to) of layer through Rope, 1024 at a time (queries discarded).</summary>
    protected void Fill(OpScope s, KvCache cache, int layer, int from, int to, RopeTable table)
    {
        const int chunk = 1024;
        for (int p = from; p < to; p += chunk)
        {
            int n = Math.Min(chunk, to - p);
            using var inner = new OpScope(s.Backend, $"{Name} layer {layer} at {p}");
            var q = inner.Random(DType.F32, n, QDim, Compute);
            var k = inner.Random(DType.F32, n, KvDim, Compute);
            var v = inner.Random(DType.F32, n, KvDim, Compute);
            var qFar = Remap is null ? null : inner.Upload(DType.F32, n, QDim, []);
            s.Backend.Rope(q, k, v, cache, layer, p, table, Compute, qFar);
        }
    }
}

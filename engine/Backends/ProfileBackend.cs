// An IBackend wrapper that times every op of the wrapped backend (synchronizing after each) and sums time and weight bytes
// per op and shape, to show where decode time goes. Used by `llama-run bench --profile` and `Bench --quick --profile`.
using System.Diagnostics;
using LlamaRun.Core;

namespace LlamaRun.Backends;

/// <summary>Times each call of the inner backend; Report() lists the totals, slowest first.</summary>
public sealed class ProfileBackend(IBackend inner) : IBackend
{
    private readonly Dictionary<string, (double Seconds, long Bytes, int Calls)> _totals = [];

    public string Name => inner.Name;
    public BackendCapabilities Capabilities => inner.Capabilities;
    public string Device => inner.Device;
    public int KvElementSize => inner.KvElementSize;
    public long FreeMemoryBytes => inner.FreeMemoryBytes;

    public void WaitUntilReady() => inner.WaitUntilReady();

    /// <summary>(op and shape, total seconds, bytes of weights read, calls), slowest first.</summary>
    public IEnumerable<(string Op, double Seconds, long Bytes, int Calls)> Report() =>
        _totals.OrderByDescending(kv => kv.Value.Seconds).Select(kv => (kv.Key, kv.Value.Seconds, kv.Value.Bytes, kv.Value.Calls));

    public void Clear() => _totals.Clear();

    /// <summary>The report as a markdown table per token: calls, milliseconds, share of the time, GB/s of weights (and KV cache) read.</summary>
    public string Table(int tokens, string title)
    {
        var rows = Report().ToList();
        double total = rows.Sum(r => r.Seconds);
        var sb = new System.Text.StringBuilder();
        sb.Append(FormattableString.Invariant($"| {title}: {1e3 * total / tokens:F2} ms/token timed op by op | calls/token | ms/token | % | GB/s read |\n"));
        sb.Append("|---|---:|---:|---:|---:|\n");
        foreach (var r in rows)
            sb.Append(FormattableString.Invariant(
                $"| {r.Op} | {r.Calls / (double)tokens:F0} | {1e3 * r.Seconds / tokens:F3} | {100 * r.Seconds / total:F1} | {(r.Bytes > 0 ? (r.Bytes / r.Seconds / 1e9).ToString("F1", System.Globalization.CultureInfo.InvariantCulture) : "-")} |\n"));
        return sb.ToString();
    }

    private void Time(string op, long bytes, Action a)
    {
        long t0 = Stopwatch.GetTimestamp();
        a();
        inner.Synchronize();
        double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        _totals.TryGetValue(op, out var t);
        _totals[op] = (t.Seconds + s, t.Bytes + bytes, t.Calls + 1);
    }

    public Tensor Alloc(DType dtype, int rows, int cols) => inner.Alloc(dtype, rows, cols);
    public Tensor Upload(DType dtype, int rows, int cols, nint hostData) => inner.Upload(dtype, rows, cols, hostData);
    public void Download(Tensor src, Span<float> dst) => inner.Download(src, dst);
    public KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim, bool farKeys = false) =>
        inner.AllocKvCache(numLayers, maxSeq, numKvHeads, headDim, farKeys);

    public void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Embedding(tokens, table, dst);
        inner.Synchronize();
        _totals.TryGetValue("embedding", out var t);
        _totals["embedding"] = (t.Seconds + Stopwatch.GetElapsedTime(t0).TotalSeconds, t.Bytes + dst.Length * table.DType.Size(), t.Calls + 1);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32) => Time("rmsnorm", weight.ByteLength, () => inner.RmsNorm(x, weight, dst, eps, compute));
    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32) => Time("add_rmsnorm", weight.ByteLength, () => inner.AddRmsNorm(x, y, weight, dst, eps, compute));
    public void MatMul(Tensor x, Tensor weight, Tensor dst) =>
        Time($"matmul {weight.DType.Name()} {weight.Rows}x{weight.Cols} T={x.Rows}", weight.ByteLength, () => inner.MatMul(x, weight, dst));
    public void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32, Tensor? qFar = null) =>
        Time("rope", 0, () => inner.Rope(q, k, v, cache, layer, startPos, table, compute, qFar));
    public void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32, FarQueries? far = null) =>
        Time("attention", 2L * (startPos + q.Rows) * cache.KvDim * KvElementSize, () => inner.Attention(q, cache, layer, startPos, dst, compute, far));
    public void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to) => Time("rerotate", 0, () => inner.RerotateCache(cache, length, from, to));

    public void MatMulRope(Tensor x, Tensor qkv, Tensor dst, KvCache cache, int layer, int startPos, RopeTable table) =>
        Time($"matmul_rope {qkv.DType.Name()} {qkv.Rows}x{qkv.Cols} T={x.Rows}", qkv.ByteLength, () => inner.MatMulRope(x, qkv, dst, cache, layer, startPos, table));

    public void MatMulAddRmsNorm(Tensor x, Tensor weight, Tensor residual, Tensor normWeight, Tensor dst, float eps) =>
        Time($"matmul_add_rmsnorm {weight.DType.Name()} {weight.Rows}x{weight.Cols} T={x.Rows}", weight.ByteLength,
            () => inner.MatMulAddRmsNorm(x, weight, residual, normWeight, dst, eps));

    public void MatMulSwiGlu(Tensor x, Tensor gateUp, Tensor dst) =>
        Time($"matmul_swiglu {gateUp.DType.Name()} {gateUp.Rows}x{gateUp.Cols} T={x.Rows}", gateUp.ByteLength, () => inner.MatMulSwiGlu(x, gateUp, dst));

    public void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32) => Time("swiglu", 0, () => inner.SwiGlu(gate, up, dst, compute));
    public void Add(Tensor x, Tensor y, Tensor dst) => Time("add", 0, () => inner.Add(x, y, dst));
    public void Round(Tensor x, DType dtype) => Time("round", 0, () => inner.Round(x, dtype));

    public void Argmax(Tensor x, Span<int> dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Argmax(x, dst);
        _totals.TryGetValue("argmax", out var t);
        _totals["argmax"] = (t.Seconds + Stopwatch.GetElapsedTime(t0).TotalSeconds, 0, t.Calls + 1);
    }

    public void Synchronize() => inner.Synchronize();
    public void Dispose() => inner.Dispose();
}

// Sets up one BenchCase on a backend (seeded inputs, outputs, a filled KV cache) and runs it with Run().
// With copies > 1 each Run() uses the next of several input sets, so weights are read from memory, not from cache.
using System.Runtime.InteropServices;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.Bench;

/// <summary>A ready-to-run op: all tensors allocated on the backend once, Run() queues the op.</summary>
public sealed unsafe class OpRunner : IDisposable
{
    private readonly IBackend _b;
    private readonly OpCase _c;
    private readonly List<nint> _host = [];
    private readonly List<IDisposable> _owned = [];
    private readonly Set[] _sets;
    private readonly int[] _tokens;
    private readonly int[] _argmax;
    private readonly KvCache? _cache;
    private readonly RopeTable _table, _table2;
    private int _next;
    private ulong _rng = 0x9E3779B97F4A7C15;

    private sealed record Set(Tensor? X, Tensor? Y, Tensor? W, Tensor? Dst, Tensor? K, Tensor? V);

    public OpRunner(IBackend backend, OpCase c, int copies = 1)
    {
        _b = backend;
        _c = c;
        _tokens = [.. Enumerable.Range(0, c.T).Select(i => (int)((i * 7919L) % Math.Max(1, c.Out)))];
        _argmax = new int[c.T];
        _table = Table(c.Theta);
        _table2 = Table(c.Theta * 2);
        int hd = c.HeadDim, qDim = c.Heads * hd, kvDim = c.KvHeads * hd;
        _sets = new Set[Math.Max(1, copies)];
        for (int i = 0; i < _sets.Length; i++)
        {
            _sets[i] = c.Op switch
            {
                OpKind.Embedding => new(null, null, Make(c.Weight, c.Out, c.N), Make(DType.F32, c.T, c.N, zero: true), null, null),
                OpKind.RmsNorm => new(Make(DType.F32, c.T, c.N), null, Make(DType.F32, 1, c.N), Make(DType.F32, c.T, c.N, zero: true), null, null),
                OpKind.MatMul => new(Make(DType.F32, c.T, c.N), null, Make(c.Weight, c.Out, c.N), Make(DType.F32, c.T, c.Out, zero: true), null, null),
                OpKind.SwiGlu or OpKind.Add or OpKind.Argmax => new(Make(DType.F32, c.T, c.N), Make(DType.F32, c.T, c.N), null,
                    Make(DType.F32, c.T, c.N, zero: true), null, null),
                OpKind.Rope => new(Make(DType.F32, c.T, qDim), null, null, null, Make(DType.F32, c.T, kvDim), Make(DType.F32, c.T, kvDim)),
                _ => new(Make(DType.F32, c.T, qDim), null, null, Make(DType.F32, c.T, qDim, zero: true), null, null),
            };
        }
        if (c.Op is OpKind.Rope or OpKind.Attention or OpKind.Rerotate)
        {
            int ctx = c.StartPos + c.T;
            _cache = backend.AllocKvCache(1, ctx, c.KvHeads, hd);
            _owned.Add(_cache);
            if (c.Op != OpKind.Rope)
            {
                // Fill positions [0, ctx) with rotated random keys and values, in chunks, as a prefill would.
                const int chunk = 1024;
                using var q = Make(DType.F32, chunk, qDim);
                using var k = Make(DType.F32, chunk, kvDim);
                using var v = Make(DType.F32, chunk, kvDim);
                for (int p = 0; p < ctx; p += chunk)
                {
                    int n = Math.Min(chunk, ctx - p);
                    backend.Rope(q.SliceRows(0, n), k.SliceRows(0, n), v.SliceRows(0, n), _cache, 0, p, _table);
                }
                backend.Synchronize();
            }
        }
    }

    /// <summary>Queues the op once (Argmax waits for its result, as it does in decoding).</summary>
    public void Run()
    {
        var s = _sets[_next];
        if (++_next == _sets.Length) _next = 0;
        switch (_c.Op)
        {
            case OpKind.Embedding: _b.Embedding(_tokens, s.W!, s.Dst!); break;
            case OpKind.RmsNorm: _b.RmsNorm(s.X!, s.W!, s.Dst!, 1e-5f); break;
            case OpKind.MatMul: _b.MatMul(s.X!, s.W!, s.Dst!); break;
            case OpKind.SwiGlu: _b.SwiGlu(s.X!, s.Y!, s.Dst!); break;
            case OpKind.Add: _b.Add(s.X!, s.Y!, s.Dst!); break;
            case OpKind.Argmax: _b.Argmax(s.X!, _argmax); break;
            case OpKind.Rope: _b.Rope(s.X!, s.K!, s.V!, _cache!, 0, _c.StartPos, _table); break;
            case OpKind.Attention: _b.Attention(s.X!, _cache!, 0, _c.StartPos, s.Dst!); break;
            default:
                // Alternate between two tables so every call really rotates (from == to could be skipped).
                bool even = (_next & 1) == 0;
                _b.RerotateCache(_cache!, _c.T, even ? _table : _table2, even ? _table2 : _table);
                break;
        }
    }

    private RopeTable Table(float theta)
    {
        int half = _c.Rot / 2;
        var inv = new float[half];
        for (int j = 0; j < half; j++) inv[j] = (float)Math.Pow(theta, -2.0 * j / _c.Rot);
        return new RopeTable { Method = "bench", InvFreq = inv, Magnitude = _c.Magnitude };
    }

    // Uniform [-1, 1] values from a xorshift generator (fast enough for gigabyte weights), stored as dtype.
    private Tensor Make(DType dtype, int rows, int cols, bool zero = false)
    {
        long n = (long)rows * cols;
        nint p = (nint)NativeMemory.AlignedAlloc((nuint)Math.Max(64, n * dtype.Size()), 64);
        _host.Add(p);
        for (long i = 0; i < n; i++)
        {
            _rng ^= _rng << 13; _rng ^= _rng >> 7; _rng ^= _rng << 17;
            float f = zero ? 0f : (float)((_rng >> 40) * (2.0 / (1UL << 24)) - 1.0);
            if (dtype == DType.F32) ((float*)p)[i] = f;
            else ((ushort*)p)[i] = dtype == DType.BF16 ? DTypes.F32ToBF16(f) : DTypes.F32ToF16(f);
        }
        var t = _b.Upload(dtype, rows, cols, p);
        _owned.Add(t);
        return t;
    }

    public void Dispose()
    {
        foreach (var o in _owned) o.Dispose();
        foreach (var p in _host) NativeMemory.AlignedFree((void*)p);
        _owned.Clear();
        _host.Clear();
    }
}

// The tensors of one prepared op on one backend, freed together: seeded inputs (the same values on every backend, for
// the same case name), outputs with guard rows after them (ggml's sentinels), KV caches. Used by OpCase.Prepare.
using System.Runtime.InteropServices;
using System.Text;
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

/// <summary>Allocates a case's tensors on one backend from one seeded generator, and frees them together.</summary>
public sealed unsafe class OpScope : IDisposable
{
    private const int GuardRows = 2;
    private const float Sentinel = -1234.5f;
    private readonly List<IDisposable> _owned = [];
    private readonly List<nint> _host = [];
    private readonly List<(Tensor Full, int Rows, string Name)> _guarded = [];
    private ulong _state;

    /// <summary>A scope whose inputs are seeded by seedName (a case name), so two backends get identical inputs.</summary>
    public OpScope(IBackend backend, string seedName)
    {
        Backend = backend;
        ulong h = 14695981039346656037;
        foreach (char ch in seedName) h = (h ^ ch) * 1099511628211;
        _state = h | 1;
    }

    public IBackend Backend { get; }

    /// <summary>The next value of the generator, uniform in [-1, 1) (xorshift64: fast enough for gigabytes of weights).</summary>
    public float NextUniform() => (float)((Next() >> 40) * (2.0 / (1UL << 24)) - 1.0);

    /// <summary>A value in [0, n) from the generator.</summary>
    public int NextInt(int n) => (int)((Next() >> 32) * (ulong)n >> 32);

    private ulong Next()
    {
        _state ^= _state << 13;
        _state ^= _state >> 7;
        _state ^= _state << 17;
        return _state;
    }

    /// <summary>n seeded values in [-1, 1), rounded to `round` when that is not F32 (a bf16 framework's inputs are bf16 values).</summary>
    public float[] Uniform(long n, DType round = DType.F32)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = NextUniform();
        if (round != DType.F32) Cpu.CpuOps.Round(a, round);
        return a;
    }

    /// <summary>A tensor of dtype holding data (zero where data is shorter), with guard rows after it when guard is set.</summary>
    public Tensor Upload(DType dtype, int rows, int cols, ReadOnlySpan<float> data, bool guard = false, string name = "")
    {
        int total = rows + (guard ? GuardRows : 0);
        long n = (long)total * cols, live = (long)rows * cols;
        nint p = Host(n * dtype.Size());
        for (long i = 0; i < n; i++) Store(dtype, p, i, i < live ? (i < data.Length ? data[(int)i] : 0f) : Sentinel);
        return Own(dtype, total, cols, p, rows, guard, name);
    }

    /// <summary>A seeded [rows, cols] tensor of dtype, generated straight into host memory (no float[] for large weights).</summary>
    public Tensor Random(DType dtype, int rows, int cols, DType round = DType.F32)
    {
        long n = (long)rows * cols;
        nint p = Host(n * dtype.Size());
        for (long i = 0; i < n; i++)
        {
            float v = NextUniform();
            if (round == DType.BF16) v = DTypes.BF16ToF32(DTypes.F32ToBF16(v));
            else if (round == DType.F16) v = DTypes.F16ToF32(DTypes.F32ToF16(v));
            Store(dtype, p, i, v);
        }
        return Own(dtype, rows, cols, p, rows, false, "");
    }

    /// <summary>A zero-filled F32 output with guard rows after it, checked by CheckGuards.</summary>
    public Tensor Output(int rows, int cols, string name) => Upload(DType.F32, rows, cols, [], guard: true, name: name);

    public KvCache Cache(int layers, int maxSeq, int kvHeads, int headDim, bool farKeys = false)
    {
        var cache = Backend.AllocKvCache(layers, maxSeq, kvHeads, headDim, farKeys);
        _owned.Add(cache);
        return cache;
    }

    /// <summary>A named output read back to host F32 when the check asks for it.</summary>
    public OpOutput Out(string name, Tensor t) => new(name, () => Read(Backend, t));

    /// <summary>Which guard rows a backend wrote, or "" when none.</summary>
    public string CheckGuards()
    {
        var sb = new StringBuilder();
        foreach (var (full, rows, name) in _guarded)
        {
            float[] all = Read(Backend, full);
            for (long i = (long)rows * full.Cols; i < all.Length; i++)
                if (BitConverter.SingleToInt32Bits(all[i]) != BitConverter.SingleToInt32Bits(Sentinel))
                {
                    sb.Append($"{Backend.Name} wrote past {name} at element {i} ");
                    break;
                }
        }
        return sb.ToString();
    }

    /// <summary>Reads any tensor of a backend to host F32 (CPU tensors are host memory).</summary>
    public static float[] Read(IBackend backend, Tensor t)
    {
        var dst = new float[t.Length];
        backend.Download(t, dst);
        return dst;
    }

    public void Dispose()
    {
        Backend.Synchronize();
        foreach (var o in _owned) o.Dispose();
        foreach (var p in _host) NativeMemory.AlignedFree((void*)p);
        _owned.Clear();
        _host.Clear();
        _guarded.Clear();
    }

    private nint Host(long bytes)
    {
        nint p = (nint)NativeMemory.AlignedAlloc((nuint)Math.Max(64, bytes), 64);
        _host.Add(p);
        return p;
    }

    private static void Store(DType dtype, nint p, long i, float v)
    {
        if (dtype == DType.F32) ((float*)p)[i] = v;
        else ((ushort*)p)[i] = dtype == DType.BF16 ? DTypes.F32ToBF16(v) : DTypes.F32ToF16(v);
    }

    private Tensor Own(DType dtype, int total, int cols, nint p, int rows, bool guard, string name)
    {
        var full = Backend.Upload(dtype, total, cols, p);
        _owned.Add(full);
        if (guard) _guarded.Add((full, rows, name));
        return guard ? full.SliceRows(0, rows) : full;
    }
}

/// <summary>One output of a prepared op, read back as F32 on demand.</summary>
public sealed record OpOutput(string Name, Func<float[]> Read);

/// <summary>A case ready to run on one backend: Run(i) queues its i-th launch (input set i mod copies).</summary>
public sealed class PreparedOp(Action<int> run, params OpOutput[] outputs)
{
    public IReadOnlyList<OpOutput> Outputs { get; } = outputs;

    public void Run(int launch = 0) => run(launch);
}

// IBackend on the host CPU: checks shapes (one ArgumentException per violation) and calls CpuOps.
// Tensors are 64-byte aligned native memory (Alloc) or aliases of caller memory (Upload); the KV cache is F32 (the
// default, the numerical reference) or BF16 (half the memory and the bytes decode attention reads).
// Test: CpuBackendTests (shape errors, Upload aliasing, a whole layer step against CpuOps, the BF16 cache).
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>The CPU backend: SIMD, multi-threaded, and the numerical reference for the other backends.</summary>
public sealed unsafe partial class CpuBackend : IBackend
{
    /// <summary>A backend whose KV cache holds kvCache elements (F32 or BF16; BF16 rounds keys and values to nearest even).</summary>
    public CpuBackend(DType kvCache = DType.F32)
    {
        if (kvCache is not (DType.F32 or DType.BF16)) throw new ArgumentException($"the CPU KV cache is F32 or BF16, not {kvCache.Name()}", nameof(kvCache));
        KvCacheType = kvCache;
    }

    public string Name => "cpu";

    public BackendCapabilities Capabilities { get; } = new(PrefillChunk: 512, StackedDecodeProjections: false, DeviceMemory: false, IndexRemap: true, FastIndexRemap: true);

    /// <summary>Element type of the caches AllocKvCache makes.</summary>
    public DType KvCacheType { get; }

    public int KvElementSize => KvCacheType.Size();

    /// <summary>MemAvailable of /proc/meminfo (0 where that file does not exist).</summary>
    public long FreeMemoryBytes
    {
        get
        {
            try
            {
                foreach (var line in File.ReadLines("/proc/meminfo"))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return 0;
        }
    }

    public string Device =>
        $"CPU, {CpuParallel.Threads} threads, {(Vector512.IsHardwareAccelerated ? "AVX-512" : Vector256.IsHardwareAccelerated ? "AVX2" : "scalar")}";

    public Tensor Alloc(DType dtype, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        nuint bytes = (nuint)((long)rows * cols * dtype.Size());
        void* p = AllocAligned(bytes);
        NativeMemory.Clear(p, bytes);
        return new Tensor(this, dtype, rows, cols, (nint)p, static t =>
        {
            CpuParallel.WaitForWorkers();   // a worker whose GEMV item was redone may still be reading this tensor
            NativeMemory.AlignedFree((void*)t.Pointer);
        });
    }

    // From 4 MiB on, 2 MiB aligned and (on Linux) advised to be backed by transparent huge pages: decode streams the whole
    // KV cache every token, which with 4 KiB pages is a TLB miss every 4 KiB.
    private static void* AllocAligned(nuint bytes)
    {
        const nuint Huge = 2 << 20;
        if (bytes < 2 * Huge) return NativeMemory.AlignedAlloc(Math.Max(bytes, 64), 64);
        void* p = NativeMemory.AlignedAlloc(bytes, Huge);
        if (OperatingSystem.IsLinux()) _ = Madvise((nint)p, bytes / Huge * Huge, MadvHugePage);
        return p;
    }

    private const int MadvHugePage = 14;

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    public Tensor Upload(DType dtype, int rows, int cols, nint hostData)
    {
        if (hostData == 0 && (long)rows * cols > 0) throw new ArgumentException("hostData is null", nameof(hostData));
        // Disposing the alias waits for straggling workers, so the caller may free or unmap hostData afterwards.
        return new Tensor(this, dtype, rows, cols, hostData, static _ => CpuParallel.WaitForWorkers());
    }

    public void Download(Tensor src, Span<float> dst)
    {
        Check(src, nameof(src));
        if (dst.Length < src.Length) throw new ArgumentException($"dst holds {dst.Length} floats, src {src} needs {src.Length}", nameof(dst));
        int n = checked((int)src.Length);
        if (src.DType == DType.F32)
        {
            new ReadOnlySpan<float>((void*)src.Pointer, n).CopyTo(dst);
            return;
        }
        var bits = new ReadOnlySpan<ushort>((void*)src.Pointer, n);
        for (int i = 0; i < n; i++) dst[i] = src.DType == DType.BF16 ? DTypes.BF16ToF32(bits[i]) : DTypes.F16ToF32(bits[i]);
    }

    public KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim, bool farKeys = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numLayers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSeq);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numKvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        int rows = checked(numLayers * maxSeq), kvDim = checked(numKvHeads * headDim);
        return new KvCache(Alloc(KvCacheType, rows, kvDim), Alloc(KvCacheType, rows, kvDim), numLayers, maxSeq, numKvHeads, headDim,
            farKeys ? Alloc(KvCacheType, rows, kvDim) : null);
    }

    public void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst)
    {
        Check(table, nameof(table));
        Check(dst, nameof(dst), DType.F32);
        Shape(dst, nameof(dst), tokens.Length, table.Cols);
        foreach (int id in tokens)
            if ((uint)id >= (uint)table.Rows) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} outside the vocabulary [0, {table.Rows})");
        CpuOps.Embedding(tokens, (void*)table.Pointer, (float*)dst.Pointer, table.DType, table.Cols);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        Check(x, nameof(x), DType.F32);
        Check(weight, nameof(weight), DType.F32);
        Check(dst, nameof(dst), DType.F32);
        Shape(weight, nameof(weight), 1, x.Cols);
        Shape(dst, nameof(dst), x.Rows, x.Cols);
        CpuOps.RmsNorm((float*)x.Pointer, (float*)weight.Pointer, (float*)dst.Pointer, x.Rows, x.Cols, eps, compute);
    }

    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        Add(x, y, x);
        if (compute != DType.F32) Round(x, compute);
        RmsNorm(x, weight, dst, eps, compute);
    }

    public void MatMul(Tensor x, Tensor weight, Tensor dst)
    {
        Check(x, nameof(x), DType.F32);
        Check(weight, nameof(weight));
        Check(dst, nameof(dst), DType.F32);
        if (weight.Cols != x.Cols) throw new ArgumentException($"weight {weight} does not match x {x}: inner sizes {weight.Cols} != {x.Cols}", nameof(weight));
        Shape(dst, nameof(dst), x.Rows, weight.Rows);
        CpuOps.MatMul((float*)x.Pointer, (void*)weight.Pointer, (float*)dst.Pointer, weight.DType, x.Rows, x.Cols, weight.Rows);
    }

    private float[]? _swiGluScratch;   // MatMulSwiGlu's [tokens, 2 ff] projections, grown on demand
    public void MatMulSwiGlu(Tensor x, Tensor gateUp, Tensor dst)
    {
        Check(x, nameof(x), DType.F32);
        Check(gateUp, nameof(gateUp));
        Check(dst, nameof(dst), DType.F32);
        if (gateUp.Cols != x.Cols || gateUp.Rows % 2 != 0)
            throw new ArgumentException($"gate/up weight {gateUp} does not match x {x} as [2 ff, {x.Cols}]", nameof(gateUp));
        int ff = gateUp.Rows / 2;
        Shape(dst, nameof(dst), x.Rows, ff);
        long need = (long)x.Rows * 2 * ff;
        if (_swiGluScratch is null || _swiGluScratch.LongLength < need) _swiGluScratch = GC.AllocateUninitializedArray<float>(checked((int)need), pinned: true);
        fixed (float* scratch = _swiGluScratch)
            CpuOps.MatMulSwiGlu((float*)x.Pointer, (void*)gateUp.Pointer, (float*)dst.Pointer, scratch, gateUp.DType, x.Rows, x.Cols, ff);
    }

    public void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32, Tensor? qFar = null)
    {
        int heads = QueryHeads(q, cache);
        CheckCache(cache);
        Check(k, nameof(k), DType.F32);
        Check(v, nameof(v), DType.F32);
        Shape(k, nameof(k), q.Rows, cache.KvDim);
        Shape(v, nameof(v), q.Rows, cache.KvDim);
        CheckPositions(cache, layer, startPos, q.Rows);
        ArgumentNullException.ThrowIfNull(table);
        if (table.RotaryDim > cache.HeadDim) throw new ArgumentException($"rotary dim {table.RotaryDim} of table '{table.Method}' exceeds head dim {cache.HeadDim}", nameof(table));
        float* qf = null;
        void* kf = null;
        if (table.Remap is not null)
        {
            if (qFar is null) throw new ArgumentException($"table '{table.Method}' remaps positions: Rope needs qFar", nameof(qFar));
            Check(qFar, nameof(qFar), DType.F32);
            Shape(qFar, nameof(qFar), q.Rows, q.Cols);
            if (cache.KFar is null) throw new ArgumentException($"table '{table.Method}' remaps positions: the KV cache has no grouped keys", nameof(cache));
            qf = (float*)qFar.Pointer;
            kf = (void*)cache.LayerKFar(layer).Pointer;
        }
        var p = new RopeParams(q.Rows, heads, cache.NumKvHeads, cache.HeadDim, startPos, layer, cache.K.DType);
        CpuOps.Rope((float*)q.Pointer, (float*)k.Pointer, (float*)v.Pointer, (void*)cache.LayerK(layer).Pointer,
            (void*)cache.LayerV(layer).Pointer, table, p, compute, qf, kf);
    }

    public void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32, FarQueries? far = null)
    {
        int heads = QueryHeads(q, cache);
        CheckCache(cache);
        Check(dst, nameof(dst), DType.F32);
        Shape(dst, nameof(dst), q.Rows, q.Cols);
        CheckPositions(cache, layer, startPos, q.Rows);
        float* qf = null;
        void* kf = null;
        int window = 0;
        if (far is { } f)
        {
            Check(f.Q, "far.Q", DType.F32);
            Shape(f.Q, "far.Q", q.Rows, q.Cols);
            if (f.Window < 1) throw new ArgumentOutOfRangeException(nameof(far), $"remap window {f.Window} must be at least 1");
            if (cache.KFar is null) throw new ArgumentException("an index-remap attention needs a KV cache with grouped keys", nameof(cache));
            qf = (float*)f.Q.Pointer;
            kf = (void*)cache.LayerKFar(layer).Pointer;
            window = f.Window;
        }
        var p = new AttentionParams(q.Rows, heads, cache.NumKvHeads, cache.HeadDim, startPos, cache.K.DType);
        CpuOps.Attention((float*)q.Pointer, (void*)cache.LayerK(layer).Pointer, (void*)cache.LayerV(layer).Pointer, (float*)dst.Pointer, p, compute,
            qf, kf, window);
    }

    public void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to)
    {
        CheckCache(cache);
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        if ((uint)length > (uint)cache.MaxSeq) throw new ArgumentOutOfRangeException(nameof(length), $"length {length} outside [0, {cache.MaxSeq}]");
        if (from.RotaryDim != to.RotaryDim) throw new ArgumentException($"rotary dims differ: '{from.Method}' {from.RotaryDim}, '{to.Method}' {to.RotaryDim}", nameof(to));
        if (from.RotaryDim > cache.HeadDim) throw new ArgumentException($"rotary dim {from.RotaryDim} exceeds head dim {cache.HeadDim}", nameof(from));
        if (!(from.Magnitude > 0 && float.IsFinite(from.Magnitude))) throw new ArgumentException($"magnitude {from.Magnitude} of '{from.Method}' is not positive and finite", nameof(from));
        if (from.Remap is not null || to.Remap is not null) throw new NotSupportedException("re-rotating a cache of index-remap keys (the remap tables are fixed)");
        CpuOps.RerotateCache((void*)cache.K.Pointer, cache.NumLayers, cache.MaxSeq, length, cache.NumKvHeads, cache.HeadDim, from, to, cache.K.DType);
    }

    public void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32)
    {
        Check(gate, nameof(gate), DType.F32);
        Check(up, nameof(up), DType.F32);
        Check(dst, nameof(dst), DType.F32);
        Shape(up, nameof(up), gate.Rows, gate.Cols);
        Shape(dst, nameof(dst), gate.Rows, gate.Cols);
        CpuOps.SwiGlu((float*)gate.Pointer, (float*)up.Pointer, (float*)dst.Pointer, gate.Length, compute);
    }

    public void Add(Tensor x, Tensor y, Tensor dst)
    {
        Check(x, nameof(x), DType.F32);
        Check(y, nameof(y), DType.F32);
        Check(dst, nameof(dst), DType.F32);
        Shape(y, nameof(y), x.Rows, x.Cols);
        Shape(dst, nameof(dst), x.Rows, x.Cols);
        CpuOps.Add((float*)x.Pointer, (float*)y.Pointer, (float*)dst.Pointer, x.Length);
    }

    public void Argmax(Tensor x, Span<int> dst)
    {
        Check(x, nameof(x), DType.F32);
        if (x.Cols == 0 && x.Rows > 0) throw new ArgumentException($"x {x} has empty rows", nameof(x));
        if (dst.Length < x.Rows) throw new ArgumentException($"dst holds {dst.Length} ints, x {x} has {x.Rows} rows", nameof(dst));
        for (int r = 0; r < x.Rows; r++)
            dst[r] = CpuOps.Argmax(new ReadOnlySpan<float>((float*)x.Pointer + (nint)r * x.Cols, x.Cols));
    }

    public void Round(Tensor x, DType dtype)
    {
        Check(x, nameof(x), DType.F32);
        CpuOps.Round((float*)x.Pointer, x.Length, dtype);
    }

    public void Synchronize() => CpuParallel.WaitForWorkers();

    public void Dispose() { }   // nothing held: tensors belong to their owners

    private void Check(Tensor t, string name, DType? dtype = null)
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (!ReferenceEquals(t.Backend, this)) throw new ArgumentException($"{name} {t} belongs to backend '{t.Backend.Name}', not to this cpu backend", name);
        if (dtype is { } d && t.DType != d) throw new ArgumentException($"{name} is {t}, expected dtype {d.Name()}", name);
        if (t.Pointer == 0 && t.Length > 0) throw new ArgumentException($"{name} {t} has no storage", name);
    }

    private static void Shape(Tensor t, string name, int rows, int cols)
    {
        if (t.Rows != rows || t.Cols != cols) throw new ArgumentException($"{name} is {t}, expected [{rows}, {cols}]", name);
    }

    private void CheckCache(KvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        Check(cache.K, "cache.K");
        Check(cache.V, "cache.V", cache.K.DType);
        if (cache.K.DType is not (DType.F32 or DType.BF16)) throw new ArgumentException($"cache.K is {cache.K}, expected dtype F32 or BF16", nameof(cache));
        Shape(cache.K, "cache.K", cache.NumLayers * cache.MaxSeq, cache.KvDim);
        Shape(cache.V, "cache.V", cache.NumLayers * cache.MaxSeq, cache.KvDim);
    }

    private int QueryHeads(Tensor q, KvCache cache)
    {
        Check(q, nameof(q), DType.F32);
        ArgumentNullException.ThrowIfNull(cache);
        if (q.Cols % cache.HeadDim != 0) throw new ArgumentException($"q {q} is not a whole number of heads of dim {cache.HeadDim}", nameof(q));
        int heads = q.Cols / cache.HeadDim;
        if (heads == 0 || heads % cache.NumKvHeads != 0)
            throw new ArgumentException($"q {q} has {heads} heads, not a positive multiple of the cache's {cache.NumKvHeads} kv heads", nameof(q));
        return heads;
    }

    private static void CheckPositions(KvCache cache, int layer, int startPos, int tokens)
    {
        if ((uint)layer >= (uint)cache.NumLayers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} outside [0, {cache.NumLayers})");
        if (startPos < 0 || (long)startPos + tokens > cache.MaxSeq)
            throw new ArgumentOutOfRangeException(nameof(startPos), $"positions [{startPos}, {startPos + tokens}) outside the cache's [0, {cache.MaxSeq})");
    }
}

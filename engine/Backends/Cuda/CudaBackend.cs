// IBackend on an NVIDIA GPU: checks shapes, then queues the kernels of kernels/*.cu on one stream (CudaKernels).
// Owns the context, the stream, the kernel modules and small fixed work buffers; weights, activations and the KV
// cache come from Alloc/Upload/AllocKvCache. Full-precision mode (fullPrecision: true) keeps the KV cache in f32 and
// multiplies f32 activations exactly (no bf16 tensor-core operands), as the CPU backend does; slower, for reference
// runs. LLAMA_SYNC=1 waits after every launch. Exercised by BackendOpsTests.
using System.Text;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cuda;

/// <summary>The CUDA backend: every op runs asynchronously on one stream of one GPU.</summary>
public sealed unsafe partial class CudaBackend : IBackend
{
    private const int AttentionScratchFloats = 4 << 20;   // split-K partials (m, l, acc[headDim]) for decode

    private readonly int _device;
    private readonly nint _context;
    private readonly nint _stream;
    private readonly KernelLibrary _kernels;
    private readonly CudaKernels _launch;
    private readonly int _smCount, _ccMajor;
    private readonly ulong _attentionScratch;
    private readonly ulong _ropeTables;                       // [RopeTableSlots.Slots, 512] f32 InvFreq
    private readonly RopeTableSlots _rope = null!;
    private ulong _tokens;                                    // [_tokenCapacity] int token ids
    private int _tokenCapacity;
    private ulong _argmax;                                    // [_argmaxCapacity] int
    private int _argmaxCapacity;
    private bool _disposed;
    private readonly CuBlas? _blas;                           // large bf16 GEMMs when libcublas is present
    private readonly bool _flashAttention = Environment.GetEnvironmentVariable("LLAMA_FLASH_ATTENTION") != "0";
    private readonly bool _fullPrecision;                     // f32 KV cache, exact f32 matmuls

    /// <summary>Opens GPU <paramref name="device"/>, compiles or loads the cached kernels, and allocates work buffers; fullPrecision keeps the KV cache and matmul operands in f32.</summary>
    public CudaBackend(int device = 0, bool fullPrecision = false)
    {
        if (!TryInitialize(out string reason)) throw new CudaException(reason);
        _device = device;
        _fullPrecision = fullPrecision;
        int dev, major, minor, sms;
        Cu.Check(Cu.cuDeviceGet(&dev, device));
        Cu.Check(Cu.cuDeviceGetAttribute(&major, Cu.DeviceAttributeComputeCapabilityMajor, dev));
        Cu.Check(Cu.cuDeviceGetAttribute(&minor, Cu.DeviceAttributeComputeCapabilityMinor, dev));
        Cu.Check(Cu.cuDeviceGetAttribute(&sms, Cu.DeviceAttributeMultiprocessorCount, dev));
        if (major < 8) throw new CudaException($"GPU {device} has compute capability {major}.{minor}; llama-run needs 8.0 or newer (bf16 tensor cores)");
        _ccMajor = major;
        _smCount = sms;
        byte* name = stackalloc byte[256];
        Cu.Check(Cu.cuDeviceGetName(name, 256, dev));
        nuint total;
        Cu.Check(Cu.cuDeviceTotalMem(&total, dev));
        nint ctx, stream;
        Cu.Check(Cu.cuDevicePrimaryCtxRetain(&ctx, dev));
        _context = ctx;
        try
        {
            Cu.Check(Cu.cuCtxSetCurrent(ctx));
            Cu.Check(Cu.cuStreamCreate(&stream, Cu.StreamNonBlocking));
            _stream = stream;
            _kernels = new KernelLibrary(major, minor, CudaKernels.EntryPoints);
            _launch = new CudaKernels(_kernels, _stream, Environment.GetEnvironmentVariable("LLAMA_SYNC") == "1");
            _attentionScratch = Malloc(AttentionScratchFloats * 4L);
            _ropeTables = Malloc(RopeTableSlots.Bytes);
            _rope = new RopeTableSlots(_ropeTables, _stream);
            EnsureTokens(4096);
            EnsureArgmax(64);
            _blas = CuBlas.TryCreate(_stream, out _);
            if (fullPrecision) _blas?.Wide();   // the widened-weight buffer, allocated up front like every other
        }
        catch
        {
            Dispose();
            throw;
        }
        Device = $"{System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)name)} (cc {major}.{minor}, {sms} SMs, "
            + $"{total / (1 << 20)} MiB, kernels {_kernels.Target} via NVRTC {KernelCompiler.NvrtcVersion}"
            + (_blas is null ? "" : $", GEMM {Path.GetFileName(CuBlas.Library)}") + (fullPrecision ? ", full f32)" : ")");
    }

    /// <summary>True when a CUDA driver, a GPU and NVRTC are present; otherwise reason says which is missing.</summary>
    public static bool IsAvailable(out string reason) => TryInitialize(out reason);

    /// <summary>Creates the backend, or returns null with a one-line reason (no driver, no GPU, no NVRTC, compile error).</summary>
    public static CudaBackend? TryCreate(out string reason, int device = 0, bool fullPrecision = false)
    {
        if (!TryInitialize(out reason)) return null;
        try
        {
            return new CudaBackend(device, fullPrecision);
        }
        catch (Exception e) when (e is CudaException or NvrtcException)
        {
            reason = e.Message.Split('\n')[0];
            return null;
        }
    }

    private static bool TryInitialize(out string reason)
    {
        if (!Cu.TryLoad(out reason)) return false;
        if (!Nvrtc.TryLoad(out string nvrtc))
        {
            reason = nvrtc;
            return false;
        }
        return true;
    }

    public string Name => "cuda";

    public BackendCapabilities Capabilities { get; } = new(PrefillChunk: 4096, StackedDecodeProjections: true, DeviceMemory: true);

    public int KvElementSize => _fullPrecision ? 4 : 2;

    public long FreeMemoryBytes
    {
        get
        {
            Bind();
            nuint free, total;
            Cu.Check(Cu.cuMemGetInfo(&free, &total));
            return (long)free;
        }
    }

    public string Device { get; } = "";

    private void Bind() => Cu.Check(Cu.cuCtxSetCurrent(_context));

    private static void Require(Tensor t, DType dtype, string name)
    {
        if (t.DType != dtype) throw new ArgumentException($"{name} must be {dtype.Name()}, got {t}", name);
    }

    private void RequireOwn(Tensor t, string name)
    {
        if (!ReferenceEquals(t.Backend, this)) throw new ArgumentException($"{name} {t} belongs to backend {t.Backend.Name}", name);
    }

    // A cache of this backend's making: K and V both bf16 or both f32.
    private static void RequireCache(KvCache cache)
    {
        if (cache.K.DType is not (DType.BF16 or DType.F32) || cache.V.DType != cache.K.DType)
            throw new ArgumentException($"KV cache must be bf16 or f32, got K {cache.K} and V {cache.V}", nameof(cache));
    }

    private static void RequireShape(Tensor t, int rows, int cols, string name)
    {
        if (t.Rows != rows || t.Cols != cols) throw new ArgumentException($"{name} is {t}, expected [{rows}, {cols}]", name);
    }

    public void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst)
    {
        Bind();
        RequireOwn(table, nameof(table));
        Require(dst, DType.F32, nameof(dst));
        RequireShape(dst, tokens.Length, table.Cols, nameof(dst));
        foreach (int t in tokens)
            if ((uint)t >= (uint)table.Rows) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} outside the vocabulary [0, {table.Rows})");
        if (tokens.Length == 0) return;
        EnsureTokens(tokens.Length);
        fixed (int* p = tokens) Cu.Check(Cu.cuMemcpyHtoDAsync(_tokens, p, (nuint)(tokens.Length * 4), _stream));
        string variant = table.DType switch { DType.F32 => "embedding_f32", DType.F16 => "embedding_f16", _ => "embedding_bf16" };
        _launch.Embedding(variant, _tokens, (ulong)table.Pointer, (ulong)dst.Pointer, tokens.Length, table.Cols);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        Bind();
        Require(x, DType.F32, nameof(x));
        Require(weight, DType.F32, nameof(weight));
        Require(dst, DType.F32, nameof(dst));
        RequireShape(weight, 1, x.Cols, nameof(weight));
        RequireShape(dst, x.Rows, x.Cols, nameof(dst));
        if (x.Rows == 0) return;
        _launch.RmsNorm((ulong)x.Pointer, (ulong)weight.Pointer, (ulong)dst.Pointer, x.Rows, x.Cols, eps, bf16);
    }

    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        Bind();
        RequireElementwise(x, y, dst);
        Require(weight, DType.F32, nameof(weight));
        RequireShape(weight, 1, x.Cols, nameof(weight));
        if (x.Rows == 0) return;
        _launch.AddRmsNorm((ulong)x.Pointer, (ulong)y.Pointer, (ulong)weight.Pointer, (ulong)dst.Pointer, x.Rows, x.Cols, eps, bf16);
    }

    public void MatMul(Tensor x, Tensor weight, Tensor dst)
    {
        Bind();
        Require(x, DType.F32, nameof(x));
        Require(dst, DType.F32, nameof(dst));
        if (weight.Cols != x.Cols) throw new ArgumentException($"weight {weight} does not match x {x}", nameof(weight));
        RequireShape(dst, x.Rows, weight.Rows, nameof(dst));
        int tokens = x.Rows, inDim = x.Cols, outDim = weight.Rows;
        if (tokens == 0 || outDim == 0) return;
        if (_fullPrecision && tokens > CudaKernels.GemvMaxTokens && _blas is not null)
        {
            MatMulF32(x, weight, dst, tokens, inDim, outDim);
            return;
        }
        if (!_fullPrecision && weight.DType == DType.BF16 && tokens > CudaKernels.GemvMaxTokens && _blas is not null)
        {
            // Same numerics as gemm_mma_bf16: activations rounded to bf16, products accumulated in f32.
            ulong xb = _blas.Scratch((long)tokens * inDim);
            _launch.ToBf16((ulong)x.Pointer, xb, (long)tokens * inDim);
            _blas.GemmBf16(xb, (ulong)weight.Pointer, (ulong)dst.Pointer, tokens, inDim, outDim);
            return;
        }
        if (!_fullPrecision && weight.DType == DType.BF16 && tokens > CudaKernels.GemvMaxTokens)
        {
            _launch.GemmMmaBf16((ulong)x.Pointer, (ulong)weight.Pointer, (ulong)dst.Pointer, tokens, inDim, outDim);
            return;
        }
        string variant = weight.DType switch
        {
            DType.F32 => "gemv_warp_per_row_f32", DType.F16 => "gemv_warp_per_row_f16", _ => "gemv_warp_per_row_bf16",
        };
        for (int t0 = 0; t0 < tokens; t0 += CudaKernels.GemvMaxTokens)
        {
            int n = Math.Min(CudaKernels.GemvMaxTokens, tokens - t0);
            _launch.Gemv(n == 1 && weight.DType == DType.BF16 ? "gemv_warp_per_row_t1_bf16" : variant,
                (ulong)x.Pointer + (ulong)((long)t0 * inDim * 4), (ulong)weight.Pointer,
                (ulong)dst.Pointer + (ulong)((long)t0 * outDim * 4), n, inDim, outDim);
        }
    }

    // Full precision through cuBLAS: f32 weights directly, bf16/f16 weights widened to f32 a block of rows at a time.
    private void MatMulF32(Tensor x, Tensor weight, Tensor dst, int tokens, int inDim, int outDim)
    {
        if (weight.DType == DType.F32)
        {
            _blas!.GemmF32((ulong)x.Pointer, (ulong)weight.Pointer, (ulong)dst.Pointer, tokens, inDim, outDim, outDim);
            return;
        }
        ulong wide = _blas!.Wide();
        int blockRows = (int)Math.Max(1, Math.Min(outDim, CuBlas.WideElements / inDim));
        for (int r0 = 0; r0 < outDim; r0 += blockRows)
        {
            int rows = Math.Min(blockRows, outDim - r0);
            _launch.Widen(weight.DType == DType.F16, (ulong)weight.Pointer + (ulong)((long)r0 * inDim * 2), wide, (long)rows * inDim);
            _blas.GemmF32((ulong)x.Pointer, wide, (ulong)dst.Pointer + (ulong)r0 * 4, tokens, inDim, rows, outDim);
        }
    }

    public void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        Bind();
        Require(q, DType.F32, nameof(q));
        Require(k, DType.F32, nameof(k));
        Require(v, DType.F32, nameof(v));
        RequireCache(cache);
        int hd = cache.HeadDim, tokens = q.Rows;
        if (q.Cols % hd != 0) throw new ArgumentException($"q {q} is not a multiple of head dim {hd}", nameof(q));
        RequireShape(k, tokens, cache.KvDim, nameof(k));
        RequireShape(v, tokens, cache.KvDim, nameof(v));
        if ((uint)layer >= (uint)cache.NumLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        if (startPos < 0 || startPos + tokens > cache.MaxSeq)
            throw new ArgumentOutOfRangeException(nameof(startPos), $"positions [{startPos}, {startPos + tokens}) exceed the cache's {cache.MaxSeq}");
        if (table.RotaryDim > hd) throw new ArgumentException($"rotary dim {table.RotaryDim} exceeds head dim {hd}", nameof(table));
        if (tokens == 0) return;
        ulong inv = _rope.Get(table);
        var qs = table.QueryScale;
        bool qsOn = qs is not null && layer >= qs.SkipLayers;
        _launch.Rope((ulong)q.Pointer, (ulong)k.Pointer, (ulong)v.Pointer, (ulong)cache.K.Pointer, (ulong)cache.V.Pointer, inv,
            tokens, q.Cols / hd, cache.NumKvHeads, hd, table.RotaryDim, startPos, layer * cache.MaxSeq + startPos,
            table.Magnitude, qs?.Context ?? 1f, qsOn ? 1 : 0, bf16, cache.K.DType == DType.F32);
    }

    public void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        Bind();
        Require(q, DType.F32, nameof(q));
        Require(dst, DType.F32, nameof(dst));
        int hd = cache.HeadDim, tokens = q.Rows, heads = q.Cols / hd;
        if (q.Cols % hd != 0 || heads % cache.NumKvHeads != 0)
            throw new ArgumentException($"q {q} does not split into heads of {hd} grouped over {cache.NumKvHeads} KV heads", nameof(q));
        if (hd > CudaKernels.AttentionMaxHeadDim) throw new ArgumentException($"head dim {hd} above {CudaKernels.AttentionMaxHeadDim}", nameof(cache));
        RequireShape(dst, tokens, q.Cols, nameof(dst));
        if ((uint)layer >= (uint)cache.NumLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        if (startPos < 0 || startPos + tokens > cache.MaxSeq) throw new ArgumentOutOfRangeException(nameof(startPos));
        if (tokens > 65535) throw new ArgumentException($"at most 65535 queries per call, got {tokens}", nameof(q));
        if (tokens == 0) return;
        RequireCache(cache);
        long layerBytes = (long)layer * cache.MaxSeq * cache.KvDim * cache.K.DType.Size();
        ulong rowK = (ulong)cache.K.Pointer + (ulong)layerBytes;
        ulong rowV = (ulong)cache.V.Pointer + (ulong)layerBytes;
        _launch.Attention((ulong)q.Pointer, rowK, rowV, (ulong)dst.Pointer, _attentionScratch, AttentionScratchFloats, tokens,
            heads, cache.NumKvHeads, hd, startPos, _smCount, _flashAttention, bf16, cache.K.DType == DType.F32);
    }

    public void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to)
    {
        Bind();
        RequireCache(cache);
        if (from.RotaryDim != to.RotaryDim || from.RotaryDim > cache.HeadDim)
            throw new ArgumentException($"rotary dims {from.RotaryDim} and {to.RotaryDim} do not fit head dim {cache.HeadDim}", nameof(to));
        if (length < 0 || length > cache.MaxSeq) throw new ArgumentOutOfRangeException(nameof(length));
        if (length == 0) return;
        ulong f = _rope.Get(from), t = _rope.Get(to, keep: f);
        _launch.Rerotate((ulong)cache.K.Pointer, f, t, cache.NumLayers, cache.MaxSeq, length, cache.NumKvHeads, cache.HeadDim,
            from.RotaryDim, from.Magnitude, to.Magnitude, cache.K.DType == DType.F32);
    }

    public void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        Bind();
        RequireElementwise(gate, up, dst);
        if (dst.Length > 0) _launch.SwiGlu((ulong)gate.Pointer, (ulong)up.Pointer, (ulong)dst.Pointer, dst.Length, bf16);
    }

    public void Add(Tensor x, Tensor y, Tensor dst)
    {
        Bind();
        RequireElementwise(x, y, dst);
        if (dst.Length > 0) _launch.Add((ulong)x.Pointer, (ulong)y.Pointer, (ulong)dst.Pointer, dst.Length);
    }

    private static void RequireElementwise(Tensor a, Tensor b, Tensor dst)
    {
        Require(a, DType.F32, nameof(a));
        Require(b, DType.F32, nameof(b));
        Require(dst, DType.F32, nameof(dst));
        if (a.Length != b.Length || a.Length != dst.Length)
            throw new ArgumentException($"element-wise op on {a}, {b} -> {dst}: lengths differ", nameof(dst));
    }

    public void Argmax(Tensor x, Span<int> dst)
    {
        Bind();
        Require(x, DType.F32, nameof(x));
        if (dst.Length < x.Rows) throw new ArgumentException($"destination holds {dst.Length} ints, {x} has {x.Rows} rows", nameof(dst));
        if (x.Rows == 0) return;
        EnsureArgmax(x.Rows);
        _launch.Argmax((ulong)x.Pointer, _argmax, x.Rows, x.Cols);
        fixed (int* p = dst) Cu.Check(Cu.cuMemcpyDtoHAsync(p, _argmax, (nuint)(x.Rows * 4), _stream));
        Cu.Check(Cu.cuStreamSynchronize(_stream));
    }

    public void Round(Tensor x, DType dtype)
    {
        Bind();
        Require(x, DType.F32, nameof(x));
        if (dtype == DType.F32 || x.Length == 0) return;
        _launch.Round((ulong)x.Pointer, x.Length, dtype == DType.F16);
    }

    public void Synchronize()
    {
        Bind();
        Cu.Check(Cu.cuStreamSynchronize(_stream));
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_context == 0) return;
        if (Cu.cuCtxSetCurrent(_context) == Cu.Success)
        {
            if (_stream != 0) Cu.cuStreamSynchronize(_stream);
            Free(_attentionScratch);
            Free(_ropeTables);
            Free(_tokens);
            Free(_argmax);
            _blas?.Dispose();
            _kernels?.Dispose();
            if (_stream != 0) Cu.cuStreamDestroy(_stream);
        }
        Cu.cuDevicePrimaryCtxRelease(_device);
    }

    public override string ToString() => new StringBuilder("cuda: ").Append(Device).ToString();

    // True for bf16 compute (the kernel variants that round intermediates as a bf16 framework does); f16 compute is
    // a CPU reference feature only.
    private static bool Bf16Compute(DType compute) => compute switch
    {
        DType.F32 => false,
        DType.BF16 => true,
        _ => throw new NotSupportedException($"the cuda backend computes in F32 or BF16, not {compute.Name()}"),
    };
}

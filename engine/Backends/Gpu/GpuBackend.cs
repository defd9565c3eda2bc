// IBackend over an ILGPU accelerator: NVIDIA GPUs through ILGPU's CUDA accelerator (--device cuda), or the same
// kernels as .NET code on ILGPU's CPU accelerator (--device ilgpu-cpu, for debugging a kernel without a GPU). Checks
// shapes, then queues kernels of kernels/ on one stream (GpuKernels). Owns the ILGPU context, accelerator and stream
// and small fixed work buffers; weights, activations and the KV cache come from Alloc/Upload/AllocKvCache (Memory
// file). Full-precision mode keeps the KV cache in f32 and multiplies f32 activations exactly, as the CPU backend
// does. Exercised by tests/GpuOpsTests.cs (CPU accelerator in CI, CUDA on a GPU) and `llama-run check`.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using LlamaRun.Core;
using LlamaRun.Kernels;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Backends.Gpu;

/// <summary>The ILGPU backend: every op runs asynchronously on one stream of one accelerator.</summary>
public sealed unsafe partial class GpuBackend : IBackend
{
    private const int AttentionScratchFloats = 4 << 20;   // split-K partials (m, l, acc[headDim]) for decode

    private readonly Context _context;
    private readonly Accelerator _accelerator;
    private readonly AcceleratorStream _stream;
    private readonly GpuKernels _launch;
    private readonly AcceleratorKernelLoader? _loader;   // null only when the constructor failed before it
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _attentionScratch;
    private readonly GpuRopeTables _rope;
    private readonly GpuCuBlas? _blas;                  // large bf16 GEMMs when libcublas is present (CUDA only)
    private readonly bool _flashAttention = Environment.GetEnvironmentVariable("LLAMA_FLASH_ATTENTION") != "0";
    private readonly bool _fullPrecision;               // f32 KV cache, exact f32 matmuls
    private MemoryBuffer1D<int, Stride1D.Dense>? _ints; // token ids in, argmax indices out
    private Tensor? _swiGluScratch;                     // MatMulSwiGlu's products where its kernel does not apply
    private MemoryBuffer1D<float, Stride1D.Dense>? _remapPartial;   // an index remap's far-pass rows (flash attention)
    // Index remaps through flash attention and the decode kernel (far and near keys apart, merged) rather than the
    // split kernel: always on ILGPU's CPU accelerator, on CUDA unless LLAMA_REMAP_FAST=0 (FastRemapOnCuda).
    private readonly bool _fastRemap;

    /// <summary>
    /// A 1/0 switch from the environment, null when unset: LLAMA_FUSE (decode's gate/up GEMV with SwiGlu), LLAMA_FUSE_ROPE
    /// (decode's q/k/v GEMV with the rotary op), LLAMA_DECODE_GRAPH.
    /// </summary>
    private static bool? Setting(string name) => Environment.GetEnvironmentVariable(name) switch
    {
        "1" => true,
        "0" => false,
        _ => null,
    };

    /// <summary>Whether CUDA runs index remaps through the two-pass kernels (and so reports FastIndexRemap, letting the default pick one).</summary>
    public static bool FastRemapOnCuda => Environment.GetEnvironmentVariable("LLAMA_REMAP_FAST") != "0";
    private bool _disposed;

    private GpuBackend(Context context, Accelerator accelerator, string name, bool fullPrecision, GpuKernelSet kernels, DecodeTile decodeTile = DecodeTile.Setting)
    {
        _context = context;
        _accelerator = accelerator;
        Name = name;
        _fullPrecision = fullPrecision;
        _fastRemap = accelerator is not CudaAccelerator || FastRemapOnCuda;
        Capabilities = (accelerator is CudaAccelerator ? CudaCapabilities with { FastIndexRemap = _fastRemap } : CpuAcceleratorCapabilities)
            with
            {
                // H100, Llama-2-7B shape, tg128 alternated twice with the weights read by StreamedU4: 196.80 / 196.67 t/s
                // fused, 195.36 / 195.24 apart (with plain loads it measured no gain: 189.70 / 190.16 against 189.99 / 190.21).
                FusedDecode = Setting("LLAMA_FUSE") ?? true,
                // H100, Llama-2-7B shape, tg128 alternated twice: 185.98 / 185.89 t/s fused, 185.22 / 185.16 apart.
                FusedRope = Setting("LLAMA_FUSE_ROPE") ?? true,
                // The o/down GEMVs with the residual add and the next norm, its scale left to the GEMV reading it.
                // H100, Llama-2-7B shape, alternated twice in one call: tg128 206.28 / 206.37 t/s against 204.78 /
                // 205.63, at depth 16384 129.89 / 129.95 against 129.36 / 129.95 (another call: 207.04 against
                // 205.53 / 205.28, depth 16384 130.06 against 129.42 / 129.68).
                FusedNorm = Setting("LLAMA_FUSE_NORM") ?? true,
            };
        try
        {
            _stream = accelerator.CreateStream();
            if (accelerator is CudaAccelerator ca) _blas = GpuCuBlas.TryCreate(ca, _stream, out _);
            if (fullPrecision) _blas?.Wide();   // the widened-weight buffer, allocated up front like every other
            _loader = new AcceleratorKernelLoader(accelerator);   // compiles in the background from here
            _launch = new GpuKernels(_loader, _stream, accelerator.MaxNumThreadsPerGroup, accelerator.NumMultiprocessors, kernels,
                f32Cache: fullPrecision, gemm: _blas is null, emulated: accelerator is not CudaAccelerator,
                sync: Environment.GetEnvironmentVariable("LLAMA_SYNC") == "1", decodeTile: decodeTile);
            _attentionScratch = accelerator.Allocate1D<float>(AttentionScratchFloats);
            _rope = new GpuRopeTables(accelerator, _stream);
            _stepScalars = accelerator.Allocate1D<int>(DecodeStep.Count);
            _stepScalars.MemSetToZero(_stream);
            _normSums = accelerator.Allocate1D<ulong>((long)NormSlots * SquareSums.Words);
            _normSums.MemSetToZero(_stream);
            EnsureInts(4096);
        }
        catch
        {
            Dispose();
            throw;
        }
        string blas = _blas is null ? "" : $", GEMM {Path.GetFileName(GpuCuBlas.Library)}";
        Device = accelerator is CudaAccelerator c
            ? $"{c.Name} (cc {c.Architecture.Major}.{c.Architecture.Minor}, {c.NumMultiprocessors} SMs, {c.MemorySize >> 20} MiB, ILGPU {c.InstructionSet} PTX{blas}"
              + (fullPrecision ? ", full f32)" : ")")
            : $"ILGPU CPU accelerator ({accelerator.MaxNumThreadsPerGroup} threads a group, warp {accelerator.WarpSize}{(fullPrecision ? ", full f32" : "")})";
    }

    /// <summary>Opens CUDA GPU `device` through ILGPU and loads the kernels (all, or the given set), or returns null with a one-line reason.</summary>
    public static GpuBackend? TryCreateCuda(out string reason, bool fullPrecision = false, GpuKernelSet? kernels = null, int device = 0)
    {
        if (!GpuNative.TryLoad(out reason)) return null;
        Context? context = null;
        try
        {
            context = Context.Create(b => b.Cuda().Optimize(OptimizationLevel.O2).EnableAlgorithms());
            int count = context.GetCudaDevices().Count;
            if (count <= device)
            {
                reason = count == 0 ? "ILGPU found no CUDA device" : $"CUDA GPU {device} asked for, {count} found";
                context.Dispose();
                return null;
            }
            var accelerator = context.GetCudaDevice(device).CreateCudaAccelerator(context);
            return new GpuBackend(context, accelerator, "cuda", fullPrecision, kernels ?? GpuKernelSet.All);
        }
        catch (Exception e) when (e is GpuException or CudaException or InvalidOperationException or NotSupportedException)
        {
            reason = e.Message.Split('\n')[0];
            context?.Dispose();
            return null;
        }
    }

    /// <summary>
    /// The same kernels on ILGPU's CPU accelerator: 32-lane warps, groups of up to 256 threads; slow, for small shapes.
    /// decodeTile: the decode attention's key tile with one query head a lane.
    /// </summary>
    public static GpuBackend CreateCpuAccelerator(bool fullPrecision = false, GpuKernelSet? kernels = null, DecodeTile decodeTile = DecodeTile.Setting)
    {
        var context = Context.Create(b => b.CPU(new CPUDevice(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: 8, numMultiprocessors: 1))
            .Optimize(OptimizationLevel.O2).EnableAlgorithms());
        try
        {
            return new GpuBackend(context, context.CreateCPUAccelerator(0), "ilgpu-cpu", fullPrecision, kernels ?? GpuKernelSet.All, decodeTile);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Compiles every kernel the backend loads to PTX for sm_80 without a GPU (for tests and tools), in load order:
    /// the core set and the variants of kernels (default: all), with the full-precision ones unless bf16Only;
    /// decodeTile: the decode attention's key tile with one query head a lane.
    /// </summary>
    public static IReadOnlyList<(string Name, string Ptx, KernelNeeds Needs)> CompilePtx(CudaInstructionSet instructionSet,
        GpuKernelSet? kernels = null, bool bf16Only = false, DecodeTile decodeTile = DecodeTile.Setting)
    {
        using var context = Context.Create(b => b.CPU().Optimize(OptimizationLevel.O2).EnableAlgorithms());
        using var loader = new PtxKernelLoader(context, instructionSet);
        var set = kernels ?? GpuKernelSet.All;
        _ = new GpuKernels(loader, null!, 1024, 132, set, f32Cache: false, gemm: true, emulated: false, sync: false, decodeTile);
        if (!bf16Only) _ = new GpuKernels(loader, null!, 1024, 132, set, f32Cache: true, gemm: false, emulated: false, sync: false);
        return loader.Kernels.DistinctBy(k => k.Name).ToList();
    }

    /// <summary>Makes this backend's accelerator context current on the calling thread (for the libraries that use it: NCCL).</summary>
    internal void BindContext() => _accelerator.Bind();

    /// <summary>The CUDA stream every op is queued on (CUDA only).</summary>
    internal nint StreamPointer => ((CudaStream)_stream).StreamPtr;

    /// <summary>CUDA devices present (0 without a driver).</summary>
    public static int CudaDeviceCount => GpuNative.TryLoad(out _) ? GpuNative.DeviceCount : 0;

    /// <summary>True when a CUDA driver and a GPU of compute capability 8.0 or newer are present; otherwise why not.</summary>
    public static bool IsCudaAvailable(out string reason) => GpuNative.TryLoad(out reason);

    public string Name { get; }

    public BackendCapabilities Capabilities { get; }

    private static readonly BackendCapabilities CudaCapabilities = new(PrefillChunk: 4096, StackedDecodeProjections: true, DeviceMemory: true, IndexRemap: true);
    private static readonly BackendCapabilities CpuAcceleratorCapabilities = new(PrefillChunk: 512, StackedDecodeProjections: true, DeviceMemory: true, IndexRemap: true, FastIndexRemap: true);

    public string Device { get; }

    public int KvElementSize => _fullPrecision ? 4 : 2;

    /// <summary>
    /// Waits until every kernel is compiled and loaded (they compile in the background from the constructor on, so
    /// that weights load meanwhile; an op's first launch waits for its own kernel), throwing the first failure.
    /// </summary>
    public void WaitUntilReady()
    {
        if (_ready) return;
        _loader!.Complete();
        _ready = true;
    }

    private bool _ready;

    /// <summary>Seconds from the backend's creation until its last kernel was compiled and loaded.</summary>
    public double KernelLoadSeconds
    {
        get
        {
            WaitUntilReady();
            return _loader!.Seconds;
        }
    }

    /// <summary>Seconds callers waited for kernels (first launches, WaitUntilReady): what compiling them added to the work done meanwhile.</summary>
    public double KernelWaitSeconds => _loader!.WaitedSeconds;

    /// <summary>Every kernel loaded at start-up, with its compile and load time and, on CUDA, registers and local memory.</summary>
    public IReadOnlyList<KernelReport> Kernels
    {
        get
        {
            WaitUntilReady();
            return _loader!.Reports;
        }
    }

    public long FreeMemoryBytes
    {
        get
        {
            if (_accelerator is not CudaAccelerator) return 0;
            _accelerator.Bind();
            return CudaAPI.CurrentAPI.GetMemoryInfo(out long free, out _) == CudaError.CUDA_SUCCESS ? free : 0;
        }
    }

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

    private static void RequireElementwise(Tensor a, Tensor b, Tensor dst)
    {
        Require(a, DType.F32, nameof(a));
        Require(b, DType.F32, nameof(b));
        Require(dst, DType.F32, nameof(dst));
        if (a.Length != b.Length || a.Length != dst.Length)
            throw new ArgumentException($"element-wise op on {a}, {b} -> {dst}: lengths differ", nameof(dst));
    }

    // True for bf16 compute (the kernel variants that round intermediates as a bf16 framework does); f16 compute is
    // a CPU reference feature only.
    private static bool Bf16Compute(DType compute) => compute switch
    {
        DType.F32 => false,
        DType.BF16 => true,
        _ => throw new NotSupportedException($"the GPU backend computes in F32 or BF16, not {compute.Name()}"),
    };

    public void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst)
    {
        _accelerator.Bind();
        RequireOwn(table, nameof(table));
        Require(dst, DType.F32, nameof(dst));
        RequireShape(dst, tokens.Length, table.Cols, nameof(dst));
        foreach (int t in tokens)
            if ((uint)t >= (uint)table.Rows) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} outside the vocabulary [0, {table.Rows})");
        if (tokens.Length == 0) return;
        if (tokens.Length == 1 && Capabilities.FusedNorm) ResetNormSlots();   // a decoded token's forward pass starts
        Overwrites(dst);
        if (_inStep is { } step)
        {
            // A decode step reads its token from the step scalars (written before the step is queued or replayed).
            if (tokens.Length != 1 || tokens[0] != step.Token)
                throw new InvalidOperationException($"embedding of {tokens.Length} token(s) inside the decode step of token {step.Token}");
            _launch.Embedding(StepView.SubView(DecodeStep.Token, 1), table, GpuViews.F32(dst), 1, table.Cols);
            return;
        }
        var ids = EnsureInts(tokens.Length).View.SubView(0, tokens.Length);
        fixed (int* p = tokens) ids.AsContiguous().CopyFromCPUUnsafeAsync(_stream, ref *p, tokens.Length);   // pageable: staged before return
        _launch.Embedding(ids, table, GpuViews.F32(dst), tokens.Length, table.Cols);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        Require(weight, DType.F32, nameof(weight));
        Require(dst, DType.F32, nameof(dst));
        RequireShape(weight, 1, x.Cols, nameof(weight));
        RequireShape(dst, x.Rows, x.Cols, nameof(dst));
        if (x.Rows == 0 || x.Cols == 0) return;
        Reads(x);
        Reads(weight);
        Overwrites(dst);
        _launch.RmsNorm(x, weight, dst, x.Rows, x.Cols, eps, bf16);
    }

    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        _accelerator.Bind();
        RequireElementwise(x, y, dst);
        Require(weight, DType.F32, nameof(weight));
        RequireShape(weight, 1, x.Cols, nameof(weight));
        if (x.Rows == 0 || x.Cols == 0) return;
        Reads(x);
        Reads(y);
        Reads(weight);
        Overwrites(dst);
        _launch.AddRmsNorm(x, y, weight, dst, x.Rows, x.Cols, eps, bf16);
    }

    public void MatMul(Tensor x, Tensor weight, Tensor dst)
    {
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        Require(dst, DType.F32, nameof(dst));
        RequireOwn(weight, nameof(weight));
        if (weight.Cols != x.Cols) throw new ArgumentException($"weight {weight} does not match x {x}", nameof(weight));
        RequireShape(dst, x.Rows, weight.Rows, nameof(dst));
        int tokens = x.Rows, inDim = x.Cols, outDim = weight.Rows;
        if (tokens == 0 || outDim == 0) return;
        Reads(x);
        Overwrites(dst);
        bool prefill = tokens > MatMulKernels.GemvMaxTokens;
        if (prefill) NotInStep("a prefill matmul");
        if (_fullPrecision && prefill && _blas is not null)
        {
            MatMulF32(x, weight, dst, tokens, inDim, outDim);
            return;
        }
        if (!_fullPrecision && weight.DType == DType.BF16 && prefill)
        {
            if (_blas is not null)
            {
                // Same numerics as GemmBf16: activations rounded to bf16, products accumulated in f32.
                var xb = _blas.Scratch((long)tokens * inDim);
                _launch.ToBf16(GpuViews.F32(x), xb, (long)tokens * inDim);
                _blas.GemmBf16(xb, weight, dst, tokens, inDim, outDim);
            }
            else
            {
                _launch.GemmBf16(GpuViews.F32(x), GpuViews.U16(weight), GpuViews.F32(dst), tokens, inDim, outDim);
            }
            return;
        }
        for (int t0 = 0; t0 < tokens; t0 += MatMulKernels.GemvMaxTokens)
        {
            int n = Math.Min(MatMulKernels.GemvMaxTokens, tokens - t0);
            _launch.Gemv(x.SliceRows(t0, n), weight, dst.SliceRows(t0, n), n, inDim, outDim);
        }
    }

    // The rotary kernels' scalars for a table at layer's rows of cache (the query scale gated by the layer); step: the
    // position comes from the decode step's device scalars.
    private static RopeArgs RopeArgsOf(RopeTable table, KvCache cache, int heads, int layer, int startPos, bool step)
    {
        var qs = table.QueryScale;
        bool qsOn = qs is not null && layer >= qs.SkipLayers;
        return new RopeArgs(heads, cache.NumKvHeads, cache.HeadDim, table.RotaryDim, startPos, layer * cache.MaxSeq,
            table.Magnitude, qs?.Context ?? 1f, qsOn ? 1 : 0, HeadsPerGroup: 0, StepPosition: step ? 1 : 0);
    }

    public void MatMulRope(Tensor x, Tensor qkv, Tensor dst, KvCache cache, int layer, int startPos, RopeTable table)
    {
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        Require(dst, DType.F32, nameof(dst));
        RequireOwn(qkv, nameof(qkv));
        RequireCache(cache);
        int hd = cache.HeadDim, kvDim = cache.KvDim, qDim = dst.Cols - 2 * kvDim;
        if (qkv.Cols != x.Cols || qkv.Rows != dst.Cols)
            throw new ArgumentException($"q/k/v weight {qkv} does not match x {x} and dst {dst}", nameof(qkv));
        // One token of a bf16 cache whose heads rotate whole: the fused GEMV; otherwise the projection, then Rope.
        if (x.Rows == 1 && dst.Rows == 1 && qDim > 0 && qDim % hd == 0 && table.Remap is null && table.RotaryDim == hd
            && cache.K.DType == DType.BF16 && GpuKernels.GemvBf16Fits(x, qkv))
        {
            if ((uint)layer >= (uint)cache.NumLayers) throw new ArgumentOutOfRangeException(nameof(layer));
            if (startPos < 0 || startPos >= cache.MaxSeq)
                throw new ArgumentOutOfRangeException(nameof(startPos), $"position {startPos} is past the cache's {cache.MaxSeq}");
            var args = RopeArgsOf(table, cache, qDim / hd, layer, startPos, InStep(startPos, 1, "MatMulRope"));
            var (sums, norm) = DeferredInput(x);
            Overwrites(dst);
            _launch.GemvRope(x, qkv, dst, cache.K, cache.V, _rope.Get(table), StepView, args, sums, norm);
            return;
        }
        Reads(x);
        IBackend.MatMulThenRope(this, x, qkv, dst, cache, layer, startPos, table);
    }

    public void MatMulSwiGlu(Tensor x, Tensor gateUp, Tensor dst)
    {
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        Require(dst, DType.F32, nameof(dst));
        RequireOwn(gateUp, nameof(gateUp));
        if (gateUp.Cols != x.Cols || gateUp.Rows % 2 != 0)
            throw new ArgumentException($"gate/up weight {gateUp} does not match x {x} as [2 ff, {x.Cols}]", nameof(gateUp));
        int ff = gateUp.Rows / 2;
        RequireShape(dst, x.Rows, ff, nameof(dst));
        if (x.Rows == 0 || ff == 0) return;
        if (x.Rows == 1 && GpuKernels.GemvBf16Fits(x, gateUp))
        {
            var (sums, norm) = DeferredInput(x);
            Overwrites(dst);
            _launch.GemvSwiGlu(x, gateUp, dst, sums, norm, x.Cols, ff);
            return;
        }
        Reads(x);
        // Other weight types and several tokens: the product, then SwiGlu of its halves.
        var both = EnsureScratch(ref _swiGluScratch, x.Rows, 2 * ff);
        MatMul(x, gateUp, both);
        for (int t = 0; t < x.Rows; t++)
            SwiGlu(both.SliceRows(t, 1).SliceCols(0, ff), both.SliceRows(t, 1).SliceCols(ff, ff), dst.SliceRows(t, 1));
    }

    // Full precision through cuBLAS: f32 weights directly, bf16/f16 weights widened to f32 a block of rows at a time.
    private void MatMulF32(Tensor x, Tensor weight, Tensor dst, int tokens, int inDim, int outDim)
    {
        if (weight.DType == DType.F32)
        {
            _blas!.GemmF32(GpuViews.Address(x), GpuViews.Address(weight), GpuViews.Address(dst), tokens, inDim, outDim, outDim);
            return;
        }
        var wide = _blas!.Wide();
        int blockRows = (int)Math.Max(1, Math.Min(outDim, GpuCuBlas.WideElements / inDim));
        for (int r0 = 0; r0 < outDim; r0 += blockRows)
        {
            int rows = Math.Min(blockRows, outDim - r0);
            long n = (long)rows * inDim;
            _launch.Widen(weight.DType == DType.F16, GpuViews.U16(weight.SliceRows(r0, rows)), wide.SubView(0, n), n);
            _blas.GemmF32(GpuViews.Address(x), (ulong)wide.LoadEffectiveAddressAsPtr(), GpuViews.Address(dst) + (ulong)r0 * 4, tokens, inDim, rows, outDim);
        }
    }

    public void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32, Tensor? qFar = null)
    {
        bool bf16 = Bf16Compute(compute);
        _accelerator.Bind();
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
        Reads(q);
        Reads(k);
        Reads(v);
        if (qFar is not null) Overwrites(qFar);
        var inv = _rope.Get(table);
        var args = RopeArgsOf(table, cache, q.Cols / hd, layer, startPos, InStep(startPos, tokens, "Rope"));
        if (table.Remap is { } remap)
        {
            // The far branch reads the unrotated q and k, so it goes first.
            if (qFar is null) throw new ArgumentException($"table '{table.Method}' remaps positions: Rope needs qFar", nameof(qFar));
            Require(qFar, DType.F32, nameof(qFar));
            RequireShape(qFar, q.Rows, q.Cols, nameof(qFar));
            if (cache.KFar is null) throw new ArgumentException($"table '{table.Method}' remaps positions: the KV cache has no grouped keys", nameof(cache));
            // Key dims: a group size per KV head and pair of this layer (stride pairs); otherwise one per pair (stride 0).
            var groups = remap.KeyDims is null ? _rope.Get(remap.Group, keep: table.InvFreq) : _rope.LayerGroups(remap, layer, cache.NumKvHeads);
            int groupStride = remap.KeyDims is null ? 0 : remap.Group.Length;
            _launch.RopeFar(GpuViews.F32(q), GpuViews.F32(k), GpuViews.F32(qFar), cache.KFar, inv, groups, groupStride, StepView, tokens, args,
                remap.Window, remap.Floor, bf16);
        }
        _launch.Rope(GpuViews.F32(q), GpuViews.F32(k), GpuViews.F32(v), cache.K, cache.V, inv, StepView, tokens, args, bf16);
    }

    public void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32, FarQueries? far = null)
    {
        bool bf16 = Bf16Compute(compute);
        _accelerator.Bind();
        Require(q, DType.F32, nameof(q));
        Require(dst, DType.F32, nameof(dst));
        int hd = cache.HeadDim, tokens = q.Rows, heads = q.Cols / hd;
        if (q.Cols % hd != 0 || heads % cache.NumKvHeads != 0)
            throw new ArgumentException($"q {q} does not split into heads of {hd} grouped over {cache.NumKvHeads} KV heads", nameof(q));
        if (hd > AttentionKernels.MaxHeadDim) throw new ArgumentException($"head dim {hd} above {AttentionKernels.MaxHeadDim}", nameof(cache));
        RequireShape(dst, tokens, q.Cols, nameof(dst));
        if ((uint)layer >= (uint)cache.NumLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        if (startPos < 0 || startPos + tokens > cache.MaxSeq) throw new ArgumentOutOfRangeException(nameof(startPos));
        if (tokens > 65535) throw new ArgumentException($"at most 65535 queries per call, got {tokens}", nameof(q));
        if (tokens == 0) return;
        RequireCache(cache);
        Reads(q);
        if (far is { } fq) Reads(fq.Q);
        Overwrites(dst);
        int stepLength = InStep(startPos, tokens, "Attention") ? _inStep!.Value.BucketLength : 0;
        if (far is { } f)
        {
            Require(f.Q, DType.F32, "far.Q");
            RequireShape(f.Q, tokens, q.Cols, "far.Q");
            if (f.Window < 1) throw new ArgumentOutOfRangeException(nameof(far), $"remap window {f.Window} must be at least 1");
            if (cache.KFar is null) throw new ArgumentException("an index-remap attention needs a KV cache with grouped keys", nameof(cache));
            var farPartial = _fastRemap && tokens >= AttentionFlashKernels.MinTokens
                ? EnsureRemapPartial((long)tokens * heads * (hd + 2)).View : _attentionScratch.View.SubView(0, 0);
            _launch.Attention(GpuViews.F32(q), cache.LayerK(layer), cache.LayerV(layer), GpuViews.F32(dst), _attentionScratch.View, tokens,
                heads, cache.NumKvHeads, hd, startPos, _flashAttention, bf16, StepView, stepLength, GpuViews.F32(f.Q), cache.LayerKFar(layer), f.Window,
                farPartial, _fastRemap);
            return;
        }
        _launch.Attention(GpuViews.F32(q), cache.LayerK(layer), cache.LayerV(layer), GpuViews.F32(dst), _attentionScratch.View, tokens,
            heads, cache.NumKvHeads, hd, startPos, _flashAttention, bf16, StepView, stepLength);
    }

    public void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to)
    {
        _accelerator.Bind();
        NotInStep("RerotateCache");
        RequireCache(cache);
        if (from.RotaryDim != to.RotaryDim || from.RotaryDim > cache.HeadDim)
            throw new ArgumentException($"rotary dims {from.RotaryDim} and {to.RotaryDim} do not fit head dim {cache.HeadDim}", nameof(to));
        if (length < 0 || length > cache.MaxSeq) throw new ArgumentOutOfRangeException(nameof(length));
        if (length == 0) return;
        var f = _rope.Get(from);
        var t = _rope.Get(to, keep: from);
        _launch.Rerotate(cache.K, f, t, cache.NumLayers, cache.MaxSeq, length, cache.NumKvHeads, cache.HeadDim, from.RotaryDim,
            from.Magnitude, to.Magnitude);
    }

    public void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32)
    {
        bool bf16 = Bf16Compute(compute);
        _accelerator.Bind();
        RequireElementwise(gate, up, dst);
        Reads(gate);
        Reads(up);
        Overwrites(dst);
        if (dst.Length > 0) _launch.SwiGlu(GpuViews.F32(gate), GpuViews.F32(up), GpuViews.F32(dst), dst.Length, bf16);
    }

    public void Add(Tensor x, Tensor y, Tensor dst)
    {
        _accelerator.Bind();
        RequireElementwise(x, y, dst);
        Reads(x);
        Reads(y);
        Overwrites(dst);
        if (dst.Length > 0) _launch.Add(GpuViews.F32(x), GpuViews.F32(y), GpuViews.F32(dst), dst.Length);
    }

    public void Argmax(Tensor x, Span<int> dst)
    {
        _accelerator.Bind();
        NotInStep("Argmax");
        Require(x, DType.F32, nameof(x));
        if (dst.Length < x.Rows) throw new ArgumentException($"destination holds {dst.Length} ints, {x} has {x.Rows} rows", nameof(dst));
        if (x.Rows == 0) return;
        Reads(x);
        var idx = EnsureInts(x.Rows).View.SubView(0, x.Rows);
        _launch.Argmax(GpuViews.F32(x), idx, x.Rows, x.Cols);
        fixed (int* p = dst) idx.CopyToCPU(_stream, ref *p, x.Rows);
    }

    public void Round(Tensor x, DType dtype)
    {
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        if (dtype == DType.F32 || x.Length == 0) return;
        Reads(x);
        _launch.Round(GpuViews.F32(x), x.Length, dtype == DType.F16);
    }

    public void Synchronize()
    {
        _accelerator.Bind();
        NotInStep("Synchronize");
        _stream.Synchronize();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _loader?.Drain();   // no compile or load may outlive the accelerator
        try
        {
            _accelerator.Bind();
            _stream?.Synchronize();
        }
        catch (Exception)
        {
            // Dispose paths never throw: a failed kernel already reported its error.
        }
        _blas?.Dispose();
        _rope?.Dispose();
        _ints?.Dispose();
        _swiGluScratch?.Dispose();
        _stepScalars?.Dispose();
        _normSums?.Dispose();
        _remapPartial?.Dispose();
        _attentionScratch?.Dispose();
        _stream?.Dispose();
        _accelerator.Dispose();
        _context.Dispose();
    }

    public override string ToString() => $"{Name}: {Device}";
}

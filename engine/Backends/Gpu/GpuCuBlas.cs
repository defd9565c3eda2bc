// Optional cuBLAS for large prefill GEMMs: libcublas.so.13/.12 loaded at run time when present (LLAMA_CUBLAS=0 turns
// it off, LLAMA_CUBLAS_PATH names the file), six functions bound by hand, one handle on the backend's stream with a
// fixed workspace; its buffers are ILGPU allocations, passed by device address. Without it the backend keeps its own
// tensor-core GEMM. Full-precision mode multiplies f32 activations by f32-widened weight rows (SGEMM, no TF32).
// Exercised by the MatMul cases of tests/GpuOpsTests.cs on a GPU and `llama-run bench`.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

using LlamaRun.Core;
namespace LlamaRun.Backends.Gpu;

internal sealed unsafe class GpuCuBlas : IDisposable
{
    private const int DataBF16 = 14, DataF32 = 0, Compute32F = 68, OpN = 0, OpT = 1, GemmDefault = -1, DefaultMath = 0;
    private const long WorkspaceBytes = 32L << 20;

    private static delegate* unmanaged<nint*, int> cublasCreate;
    private static delegate* unmanaged<nint, int> cublasDestroy;
    private static delegate* unmanaged<nint, nint, int> cublasSetStream;
    private static delegate* unmanaged<nint, nint, nuint, int> cublasSetWorkspace;
    private static delegate* unmanaged<nint, int, int> cublasSetMathMode;
    private static delegate* unmanaged<nint, int, int, int, int, int, void*, ulong, int, int, ulong, int, int, void*,
        ulong, int, int, int, int, int> cublasGemmEx;
    private static readonly Lazy<string?> LoadError = new(Load);   // null once loaded, else why not (runs once)

    private readonly Accelerator _accelerator;
    private nint _handle;
    private MemoryBuffer1D<byte, Stride1D.Dense>? _workspace;
    private MemoryBuffer1D<ushort, Stride1D.Dense>? _scratch;   // bf16 activations of the current GEMM
    private MemoryBuffer1D<float, Stride1D.Dense>? _wide;       // f32 weight rows of the current full-precision GEMM
    private readonly AcceleratorStream _stream;

    /// <summary>f32 elements of the widened-weight buffer: weight rows are widened and multiplied in blocks this large.</summary>
    public const long WideElements = 16L << 20;

    /// <summary>The library file that was loaded, for the device line.</summary>
    public static string Library { get; private set; } = "";

    private GpuCuBlas(Accelerator accelerator, AcceleratorStream stream, nint handle)
    {
        _accelerator = accelerator;
        _stream = stream;
        _handle = handle;
    }

    /// <summary>A handle bound to stream with its own workspace, or null with a reason when cuBLAS is absent or disabled.</summary>
    public static GpuCuBlas? TryCreate(CudaAccelerator accelerator, AcceleratorStream stream, out string reason)
    {
        if (Environment.GetEnvironmentVariable("LLAMA_CUBLAS") == "0")
        {
            reason = "cuBLAS disabled (LLAMA_CUBLAS=0)";
            return null;
        }
        if (LoadError.Value is { } error)
        {
            reason = error;
            return null;
        }
        accelerator.Bind();
        nint h;
        int r = cublasCreate(&h);
        if (r != 0)
        {
            reason = $"cublasCreate failed with status {r}";
            return null;
        }
        var blas = new GpuCuBlas(accelerator, stream, h);
        blas._workspace = accelerator.Allocate1D<byte>(WorkspaceBytes);
        if ((r = cublasSetStream(h, ((CudaStream)stream).StreamPtr)) != 0
            || (r = cublasSetWorkspace(h, blas._workspace.View.AsContiguous().LoadEffectiveAddressAsPtr(), (nuint)WorkspaceBytes)) != 0
            || (r = cublasSetMathMode(h, DefaultMath)) != 0)
        {
            blas.Dispose();
            reason = $"cuBLAS handle setup failed with status {r}";
            return null;
        }
        reason = "";
        return blas;
    }

    private static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable("LLAMA_CUBLAS_PATH") is { Length: > 0 } path) yield return path;
        string[] dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"];
        foreach (var n in new[] { "libcublas.so.13", "libcublas.so.12", "libcublas.so" })
        {
            foreach (var d in dirs) yield return Path.Combine(d, n);
            yield return n;
        }
    }

    private static string? Load()
    {
        nint lib = NativeExports.LoadFirst(Candidates(), out string loaded);
        Library = loaded;
        if (lib == 0) return "cuBLAS not found (libcublas.so.13 or .12)";
        var exports = new NativeExports(lib);
        cublasCreate = (delegate* unmanaged<nint*, int>)exports.Get("cublasCreate_v2");
        cublasDestroy = (delegate* unmanaged<nint, int>)exports.Get("cublasDestroy_v2");
        cublasSetStream = (delegate* unmanaged<nint, nint, int>)exports.Get("cublasSetStream_v2");
        cublasSetWorkspace = (delegate* unmanaged<nint, nint, nuint, int>)exports.Get("cublasSetWorkspace_v2");
        cublasSetMathMode = (delegate* unmanaged<nint, int, int>)exports.Get("cublasSetMathMode");
        cublasGemmEx = (delegate* unmanaged<nint, int, int, int, int, int, void*, ulong, int, int, ulong, int, int, void*,
            ulong, int, int, int, int, int>)exports.Get("cublasGemmEx");
        return exports.AnyMissing ? $"{Library} lacks {exports.MissingList}" : null;
    }

    /// <summary>A bf16 buffer of at least elements entries for the activations; grows (after a stream sync) only when a larger prefill arrives.</summary>
    public ArrayView<ushort> Scratch(long elements)
    {
        if (_scratch is null || _scratch.Length < elements)
        {
            _stream.Synchronize();
            _scratch?.Dispose();
            _scratch = null;
            _scratch = _accelerator.Allocate1D<ushort>(Math.Max(elements, 1L << 20));
        }
        return _scratch.View.SubView(0, elements);
    }

    /// <summary>The f32 buffer of WideElements entries that full-precision GEMMs widen weight rows into.</summary>
    public ArrayView<float> Wide() => (_wide ??= _accelerator.Allocate1D<float>(WideElements)).View;

    /// <summary>dst[T, out] (f32) = x[T, in] (bf16) * weight[out, in]^T (bf16), f32 accumulation, on the handle's stream.</summary>
    public void GemmBf16(ArrayView<ushort> x, Tensor weight, Tensor dst, int tokens, int inDim, int outDim) =>
        Gemm((ulong)x.LoadEffectiveAddressAsPtr(), GpuViews.Address(weight), DataBF16, GpuViews.Address(dst), tokens, inDim, outDim, outDim);

    /// <summary>Columns [0, rows) of dst[T, ldDst] (f32) = x[T, in] (f32) * weight[rows, in]^T (f32): SGEMM without TF32.</summary>
    public void GemmF32(ulong x, ulong weight, ulong dst, int tokens, int inDim, int rows, int ldDst) =>
        Gemm(x, weight, DataF32, dst, tokens, inDim, rows, ldDst);

    private void Gemm(ulong x, ulong weight, int type, ulong dst, int tokens, int inDim, int outDim, int ldDst)
    {
        // Column-major view: C[out, T] = op_T(W[in, out]) * X[in, T].
        float alpha = 1f, beta = 0f;
        int r = cublasGemmEx(_handle, OpT, OpN, outDim, tokens, inDim, &alpha, weight, type, inDim, x, type, inDim,
            &beta, dst, DataF32, ldDst, Compute32F, GemmDefault);
        if (r != 0) throw new GpuException($"cublasGemmEx failed with status {r} (T {tokens}, in {inDim}, out {outDim})");
    }

    public void Dispose()
    {
        if (_handle != 0) cublasDestroy(_handle);   // dispose paths never throw
        _handle = 0;
        _workspace?.Dispose();
        _scratch?.Dispose();
        _wide?.Dispose();
        _workspace = null;
        _scratch = null;
        _wide = null;
    }
}

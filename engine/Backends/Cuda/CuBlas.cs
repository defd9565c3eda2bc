// Optional cuBLAS for large prefill GEMMs: libcublas.so.13/.12 loaded at run time when present (LLAMA_CUBLAS=0 turns
// it off), six functions bound by hand, one handle on the backend's stream with a fixed workspace. Without it the
// backend keeps its own mma.sync GEMM. Full-precision mode multiplies f32 activations by f32-widened weight rows
// (SGEMM, no TF32). Exercised by tests/BackendOpsTests.cs MatMul and `llama-run bench`.
using System.Runtime.InteropServices;

namespace LlamaRun.Backends.Cuda;

internal sealed unsafe class CuBlas : IDisposable
{
    private const int DataBF16 = 14, DataF32 = 0, Compute32F = 68, OpN = 0, OpT = 1, GemmDefault = -1;
    private const int DefaultMath = 0;

    private static delegate* unmanaged<nint*, int> cublasCreate;
    private static delegate* unmanaged<nint, int> cublasDestroy;
    private static delegate* unmanaged<nint, nint, int> cublasSetStream;
    private static delegate* unmanaged<nint, ulong, nuint, int> cublasSetWorkspace;
    private static delegate* unmanaged<nint, int, int> cublasSetMathMode;
    private static delegate* unmanaged<nint, int, int, int, int, int, void*, ulong, int, int, ulong, int, int, void*,
        ulong, int, int, int, int, int> cublasGemmEx;
    private static readonly Lazy<string?> LoadError = new(Load);   // null once loaded, else why not (runs once)

    private const long WorkspaceBytes = 32L << 20;

    private nint _handle;
    private readonly nint _stream;
    private ulong _workspace;
    private ulong _scratch;        // [capacity] bf16 activations of the current GEMM
    private long _scratchCapacity;
    private ulong _wide;           // [capacity] f32 weight rows of the current full-precision GEMM
    private long _wideCapacity;

    /// <summary>f32 elements of the widened-weight buffer: weight rows are widened and multiplied in blocks this large.</summary>
    public const long WideElements = 16L << 20;

    /// <summary>Library and version that was loaded, for the device line.</summary>
    public static string Library { get; private set; } = "";

    private CuBlas(nint handle, nint stream)
    {
        _handle = handle;
        _stream = stream;
    }

    /// <summary>Creates a handle bound to stream with its own workspace, or null with a reason when cuBLAS is absent or disabled.</summary>
    public static CuBlas? TryCreate(nint stream, out string reason)
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
        nint h;
        int r = cublasCreate(&h);
        if (r != 0)
        {
            reason = $"cublasCreate failed with status {r}";
            return null;
        }
        var blas = new CuBlas(h, stream);
        ulong ws;
        Cu.Check(Cu.cuMemAlloc(&ws, (nuint)WorkspaceBytes));
        blas._workspace = ws;
        if ((r = cublasSetStream(h, stream)) != 0 || (r = cublasSetWorkspace(h, ws, (nuint)WorkspaceBytes)) != 0
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
        string[] names = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"];
        if (Environment.GetEnvironmentVariable("LLAMA_CUBLAS_PATH") is { Length: > 0 } path) yield return path;
        string[] dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"];
        foreach (var n in names)
        {
            foreach (var d in dirs) yield return Path.Combine(d, n);
            yield return n;
        }
    }

    private static string? Load()
    {
        nint lib = 0;
        foreach (var c in Candidates())
        {
            if ((c.Contains('/') && !File.Exists(c)) || !NativeLibrary.TryLoad(c, out lib)) continue;
            Library = c;
            break;
        }
        if (lib == 0) return "cuBLAS not found (libcublas.so.13 or .12)";
        var exports = new NativeExports(lib);
        nint Get(string name) => exports.Get(name);
        cublasCreate = (delegate* unmanaged<nint*, int>)Get("cublasCreate_v2");
        cublasDestroy = (delegate* unmanaged<nint, int>)Get("cublasDestroy_v2");
        cublasSetStream = (delegate* unmanaged<nint, nint, int>)Get("cublasSetStream_v2");
        cublasSetWorkspace = (delegate* unmanaged<nint, ulong, nuint, int>)Get("cublasSetWorkspace_v2");
        cublasSetMathMode = (delegate* unmanaged<nint, int, int>)Get("cublasSetMathMode");
        cublasGemmEx = (delegate* unmanaged<nint, int, int, int, int, int, void*, ulong, int, int, ulong, int, int, void*,
            ulong, int, int, int, int, int>)Get("cublasGemmEx");
        return exports.AnyMissing ? $"{Library} lacks {exports.MissingList}" : null;
    }

    /// <summary>A bf16 buffer of at least elements entries for the activations; grows (after a stream sync) only when a larger prefill arrives.</summary>
    public ulong Scratch(long elements) => Grow(ref _scratch, ref _scratchCapacity, elements, 2);

    /// <summary>The f32 buffer of WideElements entries that full-precision GEMMs widen weight rows into.</summary>
    public ulong Wide() => Grow(ref _wide, ref _wideCapacity, WideElements, 4);

    private ulong Grow(ref ulong buffer, ref long capacity, long elements, int elementBytes)
    {
        if (elements <= capacity) return buffer;
        Cu.Check(Cu.cuStreamSynchronize(_stream));
        if (buffer != 0) Cu.cuMemFree(buffer);
        buffer = 0;
        capacity = 0;
        long cap = Math.Max(elements, 1L << 20);
        ulong p;
        Cu.Check(Cu.cuMemAlloc(&p, (nuint)(cap * elementBytes)));
        buffer = p;
        capacity = cap;
        return p;
    }

    /// <summary>dst[T, out] (f32) = x[T, in] (bf16) * weight[out, in]^T (bf16), f32 accumulation, on the handle's stream.</summary>
    public void GemmBf16(ulong x, ulong weight, ulong dst, int tokens, int inDim, int outDim) =>
        Gemm(x, weight, DataBF16, dst, tokens, inDim, outDim, outDim);

    /// <summary>Columns [0, rows) of dst[T, ldDst] (f32) = x[T, in] (f32) * weight[rows, in]^T (f32): SGEMM without TF32.</summary>
    public void GemmF32(ulong x, ulong weight, ulong dst, int tokens, int inDim, int rows, int ldDst) =>
        Gemm(x, weight, DataF32, dst, tokens, inDim, rows, ldDst);

    private void Gemm(ulong x, ulong weight, int type, ulong dst, int tokens, int inDim, int outDim, int ldDst)
    {
        // Column-major view: C[out, T] = op_T(W[in, out]) * X[in, T].
        float alpha = 1f, beta = 0f;
        int r = cublasGemmEx(_handle, OpT, OpN, outDim, tokens, inDim, &alpha, weight, type, inDim, x, type, inDim,
            &beta, dst, DataF32, ldDst, Compute32F, GemmDefault);
        if (r != 0) throw new CudaException($"cublasGemmEx failed with status {r} (T {tokens}, in {inDim}, out {outDim})");
    }

    public void Dispose()
    {
        if (_handle != 0) cublasDestroy(_handle);   // dispose paths never throw
        _handle = 0;
        if (_workspace != 0) Cu.cuMemFree(_workspace);
        if (_scratch != 0) Cu.cuMemFree(_scratch);
        if (_wide != 0) Cu.cuMemFree(_wide);
        _workspace = _scratch = _wide = 0;
    }
}

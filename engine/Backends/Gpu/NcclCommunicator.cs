// Collectives between the GPU ranks of one process through NCCL (libnccl.so.2, loaded at run time from
// LLAMA_NCCL_PATH, the system's library path or an nvidia-nccl Python wheel): one NCCL communicator per GpuBackend,
// made together (ncclGroupStart, ncclCommInitRank for each rank with its accelerator's context current,
// ncclGroupEnd), each collective queued on the rank's stream over its tensors' device addresses, so it is ordered
// with the rank's kernels and its wait is the GPU's. NVLink multicast stays off: NCCL_NVLS_ENABLE=0 is set before the
// communicators are made unless the environment sets it. Abort (a rank that failed) aborts every communicator, so the
// other ranks' collectives end instead of waiting for it. Used by `llama-run bench --tp N --device cuda`.
using System.Runtime.InteropServices;
using LlamaRun.Core;

namespace LlamaRun.Backends.Gpu;

/// <summary>An ICommunicator over NCCL for GPU backends of one process, rank r on ranks[r].</summary>
public sealed unsafe class NcclCommunicator : ICommunicator, IDisposable
{
    private const int Float32 = 7, Sum = 0, Success = 0;

    [StructLayout(LayoutKind.Sequential, Size = 128)]
    private struct UniqueId
    {
        private fixed byte _bytes[128];
    }

    private static delegate* unmanaged<UniqueId*, int> ncclGetUniqueId;
    private static delegate* unmanaged<nint*, int, UniqueId, int, int> ncclCommInitRank;
    private static delegate* unmanaged<int> ncclGroupStart, ncclGroupEnd;
    private static delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> ncclAllReduce;
    private static delegate* unmanaged<nint, nint, nuint, int, nint, nint, int> ncclAllGather;
    private static delegate* unmanaged<nint, int> ncclCommAbort, ncclCommDestroy;
    private static delegate* unmanaged<int, byte*> ncclGetErrorString;
    private static readonly Lazy<string?> LoadError = new(Load);   // null once loaded, else why not

    private readonly GpuBackend[] _ranks;
    private readonly nint[] _comms;
    private volatile string? _aborted;

    /// <summary>The library file that was loaded.</summary>
    public static string Library { get; private set; } = "";

    private NcclCommunicator(GpuBackend[] ranks, nint[] comms)
    {
        _ranks = ranks;
        _comms = comms;
    }

    public int Size => _ranks.Length;

    /// <summary>Communicators for the ranks (each a CUDA backend on its own GPU), or null with a one-line reason.</summary>
    public static NcclCommunicator? TryCreate(IReadOnlyList<GpuBackend> ranks, out string reason)
    {
        if (LoadError.Value is { } error)
        {
            reason = error;
            return null;
        }
        if (ranks.Any(r => r.Name != "cuda"))
        {
            reason = "NCCL needs CUDA backends";
            return null;
        }
        if (Environment.GetEnvironmentVariable("NCCL_NVLS_ENABLE") is null) Environment.SetEnvironmentVariable("NCCL_NVLS_ENABLE", "0");
        UniqueId id;
        int r = ncclGetUniqueId(&id);
        if (r != Success)
        {
            reason = $"ncclGetUniqueId failed: {ErrorString(r)}";
            return null;
        }
        var comms = new nint[ranks.Count];
        r = ncclGroupStart();
        for (int i = 0; i < ranks.Count && r == Success; i++)
        {
            ranks[i].BindContext();
            nint c;
            r = ncclCommInitRank(&c, ranks.Count, id, i);
            comms[i] = c;
        }
        int end = ncclGroupEnd();
        if (r == Success) r = end;
        if (r != Success)
        {
            foreach (var c in comms.Where(c => c != 0)) ncclCommDestroy(c);
            reason = $"NCCL could not connect {ranks.Count} GPUs: {ErrorString(r)}";
            return null;
        }
        reason = "";
        return new NcclCommunicator([.. ranks], comms);
    }

    public void AllReduce(int rank, IBackend backend, Tensor x)
    {
        var b = Check(rank, backend, x);
        Run(rank, "all-reduce", ncclAllReduce((nint)GpuViews.Address(x), (nint)GpuViews.Address(x), (nuint)x.Length, Float32, Sum, _comms[rank], b.StreamPointer));
    }

    // NCCL gathers whole buffers one after another; a row of full is the ranks' rows side by side, so each row is its
    // own all-gather, the rows queued as one group.
    public void AllGather(int rank, IBackend backend, Tensor local, Tensor full)
    {
        var b = Check(rank, backend, local);
        Check(rank, backend, full);
        if (full.Rows != local.Rows || full.Cols != local.Cols * Size)
            throw new ArgumentException($"all-gather of {local} over {Size} ranks into {full}", nameof(full));
        int r = ncclGroupStart();
        for (int row = 0; row < local.Rows && r == Success; row++)
            r = ncclAllGather((nint)GpuViews.Address(local.SliceRows(row, 1)), (nint)GpuViews.Address(full.SliceRows(row, 1)), (nuint)local.Cols, Float32,
                _comms[rank], b.StreamPointer);
        int end = ncclGroupEnd();
        Run(rank, "all-gather", r == Success ? end : r);
    }

    public void Abort(string reason)
    {
        if (_aborted is not null) return;
        _aborted = reason;
        foreach (var c in _comms) ncclCommAbort(c);   // pending collectives on every GPU end
    }

    private GpuBackend Check(int rank, IBackend backend, Tensor x)
    {
        if ((uint)rank >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {Size}");
        if (!ReferenceEquals(backend, _ranks[rank])) throw new ArgumentException($"rank {rank}'s collective on another backend than its own");
        if (x.DType != DType.F32 || !ReferenceEquals(x.Backend, backend))
            throw new ArgumentException($"NCCL collectives take F32 tensors of the rank's GPU, got {x}");
        if (_aborted is { } why) throw new CollectiveAbortedException($"rank {rank}: aborted: {why}");
        _ranks[rank].BindContext();
        return _ranks[rank];
    }

    private void Run(int rank, string op, int result)
    {
        if (result == Success) return;
        string message = $"rank {rank}: NCCL {op} failed: {ErrorString(result)}";
        Abort(message);
        throw new CollectiveAbortedException(message);
    }

    public void Dispose()
    {
        if (_aborted is null)
            foreach (var c in _comms) ncclCommDestroy(c);
        Array.Clear(_comms);
    }

    private static string ErrorString(int r)
    {
        byte* s = ncclGetErrorString is null ? null : ncclGetErrorString(r);
        return s != null ? $"{Marshal.PtrToStringUTF8((nint)s)} ({r})" : $"ncclResult {r}";
    }

    // The files to try, in order: LLAMA_NCCL_PATH, the loader's search, then the nvidia-nccl Python wheels' lib folders.
    private static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable("LLAMA_NCCL_PATH") is { Length: > 0 } path) yield return path;
        yield return "libnccl.so.2";
        var roots = new List<string> { "/usr/local/lib", "/usr/lib", "/opt/conda/lib" };
        if (Environment.GetEnvironmentVariable("HOME") is { Length: > 0 } home) roots.Add(Path.Combine(home, ".local", "lib"));
        foreach (var root in roots.Where(Directory.Exists))
            foreach (var python in Directory.EnumerateDirectories(root, "python3*").Order(StringComparer.Ordinal))
                foreach (var packages in new[] { "dist-packages", "site-packages" })
                    yield return Path.Combine(python, packages, "nvidia", "nccl", "lib", "libnccl.so.2");
    }

    private static string? Load()
    {
        nint lib = NativeExports.LoadFirst(Candidates(), out string loaded);
        Library = loaded;
        if (lib == 0) return "no NCCL: libnccl.so.2 not found (install NCCL, e.g. the nvidia-nccl-cu12 wheel, or set LLAMA_NCCL_PATH)";
        var e = new NativeExports(lib);
        ncclGetUniqueId = (delegate* unmanaged<UniqueId*, int>)e.Get("ncclGetUniqueId");
        ncclCommInitRank = (delegate* unmanaged<nint*, int, UniqueId, int, int>)e.Get("ncclCommInitRank");
        ncclGroupStart = (delegate* unmanaged<int>)e.Get("ncclGroupStart");
        ncclGroupEnd = (delegate* unmanaged<int>)e.Get("ncclGroupEnd");
        ncclAllReduce = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)e.Get("ncclAllReduce");
        ncclAllGather = (delegate* unmanaged<nint, nint, nuint, int, nint, nint, int>)e.Get("ncclAllGather");
        ncclCommAbort = (delegate* unmanaged<nint, int>)e.Get("ncclCommAbort");
        ncclCommDestroy = (delegate* unmanaged<nint, int>)e.Get("ncclCommDestroy");
        ncclGetErrorString = (delegate* unmanaged<int, byte*>)e.Get("ncclGetErrorString");
        return e.AnyMissing ? $"{Library} lacks {e.MissingList}" : null;
    }
}

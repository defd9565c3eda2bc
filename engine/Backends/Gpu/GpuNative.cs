// The few CUDA driver calls ILGPU lacks, bound by hand from libcuda.so.1 (function pointers, loaded once): kernel
// attributes (shared-memory carveout, registers, local memory), stream capture into CUDA graphs (decode steps) and the
// programmatic edges between their kernels (GridDependencies), plus
// the availability probe that says in one line why no GPU can be used, and the resolver that lets ILGPU (which
// imports "cuda") find libcuda.so.1.
// Exercised by GpuBackend's start-up (`llama-run --device cuda`, tests/GpuOpsTests.cs on a GPU).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

using LlamaRun.Core;
namespace LlamaRun.Backends.Gpu;

internal static unsafe class GpuNative
{
    private const int Success = 0;
    private const int AttributeComputeCapabilityMajor = 75, AttributeComputeCapabilityMinor = 76;
    private const int FuncAttributeNumRegs = 4, FuncAttributeLocalSizeBytes = 3, FuncAttributeMaxDynamicShared = 8, FuncAttributePreferredSharedCarveout = 9;

    private static nint _library;
    private static delegate* unmanaged<uint, int> cuInit;
    private static delegate* unmanaged<int*, int> cuDeviceGetCount;
    private static delegate* unmanaged<int*, int, int, int> cuDeviceGetAttribute;
    private static delegate* unmanaged<int*, int, nint, int> cuFuncGetAttribute;
    private static delegate* unmanaged<nint, int, int, int> cuFuncSetAttribute;
    private static delegate* unmanaged<int, byte**, int> cuGetErrorName;
    private static delegate* unmanaged<nint, int, int> cuStreamBeginCapture;
    private static delegate* unmanaged<nint, nint*, int> cuStreamEndCapture;
    private static delegate* unmanaged<nint*, nint, ulong, int> cuGraphInstantiateWithFlags;
    private static delegate* unmanaged<nint, nint, int> cuGraphLaunch;
    private static delegate* unmanaged<nint, int> cuGraphExecDestroy;
    private static delegate* unmanaged<nint, int> cuGraphDestroy;
    // Programmatic edges between a captured graph's kernels (driver 12.3 and newer).
    private static delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint*, int> cuGraphGetEdges_v2;
    private static delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint, int> cuGraphRemoveDependencies_v2;
    private static delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint, int> cuGraphAddDependencies_v2;
    private static delegate* unmanaged<nint, int*, int> cuGraphNodeGetType;
    private static delegate* unmanaged<nint, nint*, int> cuGraphKernelNodeGetParams_v2;
    private const int GraphNodeKernel = 0;                                        // CU_GRAPH_NODE_TYPE_KERNEL
    private const byte PortProgrammatic = 1, DependencyProgrammatic = 1;          // CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC, CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC
    private const int CaptureModeRelaxed = 2;   // CU_STREAM_CAPTURE_MODE_RELAXED: other threads' calls are not checked
    private static readonly Lazy<string?> LoadError = new(Load);   // null once usable, else why not (runs once)

    /// <summary>True when a CUDA driver and a GPU of compute capability 8.0 or newer are present; otherwise why not, in one line.</summary>
    public static bool TryLoad(out string reason)
    {
        reason = LoadError.Value ?? "";
        return LoadError.Value is null;
    }

    private static string? Load()
    {
        if (!NativeLibrary.TryLoad("libcuda.so.1", out _library) && !NativeLibrary.TryLoad("libcuda.so", out _library)
            && !NativeLibrary.TryLoad("nvcuda.dll", out _library))
            return "no CUDA driver (libcuda.so.1 not found)";
        var exports = new NativeExports(_library);
        cuInit = (delegate* unmanaged<uint, int>)exports.Get("cuInit");
        cuDeviceGetCount = (delegate* unmanaged<int*, int>)exports.Get("cuDeviceGetCount");
        cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)exports.Get("cuDeviceGetAttribute");
        cuFuncGetAttribute = (delegate* unmanaged<int*, int, nint, int>)exports.Get("cuFuncGetAttribute");
        cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)exports.Get("cuFuncSetAttribute");
        cuGetErrorName = (delegate* unmanaged<int, byte**, int>)exports.Get("cuGetErrorName");
        // CUDA graphs (driver 11.4 and newer): optional, decode steps run without them where absent.
        cuStreamBeginCapture = (delegate* unmanaged<nint, int, int>)exports.Get("cuStreamBeginCapture_v2", required: false);
        cuStreamEndCapture = (delegate* unmanaged<nint, nint*, int>)exports.Get("cuStreamEndCapture", required: false);
        cuGraphInstantiateWithFlags = (delegate* unmanaged<nint*, nint, ulong, int>)exports.Get("cuGraphInstantiateWithFlags", required: false);
        cuGraphLaunch = (delegate* unmanaged<nint, nint, int>)exports.Get("cuGraphLaunch", required: false);
        cuGraphExecDestroy = (delegate* unmanaged<nint, int>)exports.Get("cuGraphExecDestroy", required: false);
        cuGraphDestroy = (delegate* unmanaged<nint, int>)exports.Get("cuGraphDestroy", required: false);
        cuGraphGetEdges_v2 = (delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint*, int>)exports.Get("cuGraphGetEdges_v2", required: false);
        cuGraphRemoveDependencies_v2 = (delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint, int>)exports.Get("cuGraphRemoveDependencies_v2", required: false);
        cuGraphAddDependencies_v2 = (delegate* unmanaged<nint, nint*, nint*, EdgeData*, nuint, int>)exports.Get("cuGraphAddDependencies_v2", required: false);
        cuGraphNodeGetType = (delegate* unmanaged<nint, int*, int>)exports.Get("cuGraphNodeGetType", required: false);
        cuGraphKernelNodeGetParams_v2 = (delegate* unmanaged<nint, nint*, int>)exports.Get("cuGraphKernelNodeGetParams_v2", required: false);
        if (exports.AnyMissing) return $"CUDA driver too old: missing {exports.MissingList}";
        int r = cuInit(0), count = 0;
        if (r != Success) return $"CUDA driver present but cuInit failed: {ErrorName(r)}";
        if ((r = cuDeviceGetCount(&count)) != Success) return $"cuDeviceGetCount failed: {ErrorName(r)}";
        if (count == 0) return "CUDA driver present but no CUDA device found";
        int major, minor;
        if (cuDeviceGetAttribute(&major, AttributeComputeCapabilityMajor, 0) == Success
            && cuDeviceGetAttribute(&minor, AttributeComputeCapabilityMinor, 0) == Success && major < 8)
            return $"GPU 0 has compute capability {major}.{minor}; llama-run needs 8.0 or newer (bf16 tensor cores)";
        RegisterResolver();
        return null;
    }

    // ILGPU imports the driver as "cuda", which the loader only finds where an unversioned libcuda.so exists.
    private static void RegisterResolver()
    {
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(ILGPU.Context).Assembly,
                (name, _, _) => name == "cuda" ? _library : 0);
        }
        catch (InvalidOperationException)
        {
            // ILGPU set a resolver itself (under WSL); it finds the driver on its own.
        }
    }

    public static string ErrorName(int r)
    {
        byte* s = null;
        if (cuGetErrorName != null && cuGetErrorName(r, &s) == Success && s != null)
            return Marshal.PtrToStringUTF8((nint)s) ?? $"CUresult {r}";
        return $"CUresult {r}";
    }

    /// <summary>Throws GpuException naming the error and the call when r is not CUDA_SUCCESS.</summary>
    public static void Check(int r, [CallerArgumentExpression(nameof(r))] string? call = null)
    {
        if (r != Success) throw new GpuException($"{ErrorName(r)}: {call}");
    }

    /// <summary>
    /// Lets a kernel take `bytes` of dynamic shared memory (above 48 KB launches fail until it is raised) and asks for
    /// the largest shared-memory carveout of the unified L1/shared storage, so several groups fit on a multiprocessor.
    /// </summary>
    public static void AllowDynamicShared(nint function, int bytes)
    {
        Check(cuFuncSetAttribute(function, FuncAttributeMaxDynamicShared, bytes));
        Check(cuFuncSetAttribute(function, FuncAttributePreferredSharedCarveout, 100));
    }

    /// <summary>Registers per thread and local memory (stack, spills) per thread of a loaded kernel.</summary>
    public static (int Registers, int LocalBytes) KernelResources(nint function)
    {
        int regs, local;
        Check(cuFuncGetAttribute(&regs, FuncAttributeNumRegs, function));
        Check(cuFuncGetAttribute(&local, FuncAttributeLocalSizeBytes, function));
        return (regs, local);
    }

    /// <summary>CUDA devices the driver reports (after TryLoad succeeded).</summary>
    public static int DeviceCount
    {
        get
        {
            int n = 0;
            return cuDeviceGetCount != null && cuDeviceGetCount(&n) == Success ? n : 0;
        }
    }

    /// <summary>Whether the driver captures streams into CUDA graphs.</summary>
    public static bool HasGraphs => cuStreamBeginCapture != null && cuStreamEndCapture != null && cuGraphInstantiateWithFlags != null
        && cuGraphLaunch != null && cuGraphExecDestroy != null && cuGraphDestroy != null;

    /// <summary>Whether the driver can turn a captured graph's edges into programmatic ones (CUDA 12.3 and newer).</summary>
    public static bool HasProgrammaticEdges => HasGraphs && cuGraphGetEdges_v2 != null && cuGraphRemoveDependencies_v2 != null
        && cuGraphAddDependencies_v2 != null && cuGraphNodeGetType != null && cuGraphKernelNodeGetParams_v2 != null;

    // The layout of CUgraphEdgeData: ports and type, 5 reserved bytes.
    [StructLayout(LayoutKind.Sequential, Size = 8)]
    private struct EdgeData
    {
        public byte FromPort, ToPort, Type;
    }

    // The edges of a captured (linear) graph from one kernel into a kernel whose function waits for its predecessors
    // itself become programmatic: the second kernel's launch may begin as the first one's groups end, and its
    // griddepcontrol.wait holds it until the first has completed (its writes visible). Returns how many.
    private static int MakeProgrammatic(nint graph, Func<nint, bool> waits)
    {
        nuint n = 0;
        Check(cuGraphGetEdges_v2(graph, null, null, null, &n));
        if (n == 0) return 0;
        var from = new nint[(int)n];
        var to = new nint[(int)n];
        var data = new EdgeData[(int)n];
        fixed (nint* f = from, t = to)
        fixed (EdgeData* d = data)
            Check(cuGraphGetEdges_v2(graph, f, t, d, &n));
        var pf = new List<nint>();
        var pt = new List<nint>();
        nint* p = stackalloc nint[32];   // CUDA_KERNEL_NODE_PARAMS_v2 (72 bytes), whose first member is the function
        for (int i = 0; i < (int)n; i++)
        {
            if (data[i].Type != 0 || data[i].FromPort != 0 || !IsKernel(from[i]) || !IsKernel(to[i])) continue;
            Check(cuGraphKernelNodeGetParams_v2(to[i], p));
            if (!waits(p[0])) continue;
            pf.Add(from[i]);
            pt.Add(to[i]);
        }
        if (pf.Count == 0) return 0;
        var edges = new EdgeData[pf.Count];
        Array.Fill(edges, new EdgeData { FromPort = PortProgrammatic, Type = DependencyProgrammatic });
        fixed (nint* f = CollectionsMarshal.AsSpan(pf), t = CollectionsMarshal.AsSpan(pt))
        fixed (EdgeData* d = edges)
        {
            Check(cuGraphRemoveDependencies_v2(graph, f, t, null, (nuint)pf.Count));
            Check(cuGraphAddDependencies_v2(graph, f, t, d, (nuint)pf.Count));
        }
        return pf.Count;
    }

    private static bool IsKernel(nint node)
    {
        int type;
        Check(cuGraphNodeGetType(node, &type));
        return type == GraphNodeKernel;
    }

    /// <summary>Starts capturing the launches queued on stream (they are recorded, not run) until EndCapture.</summary>
    public static void BeginCapture(nint stream) => Check(cuStreamBeginCapture(stream, CaptureModeRelaxed));

    /// <summary>
    /// Ends the capture of stream and instantiates what it recorded as an executable graph; an invalidated capture
    /// (an operation a graph cannot hold) throws, and the stream captures no more either way. waits: which kernel
    /// functions wait for their predecessors themselves; the edges into them become programmatic first (counted in
    /// programmaticEdges; none where waits is null or the driver lacks programmatic edges).
    /// </summary>
    public static nint EndCapture(nint stream, Func<nint, bool>? waits, out int programmaticEdges)
    {
        programmaticEdges = 0;
        nint graph = 0, exec = 0;
        int r = cuStreamEndCapture(stream, &graph);
        try
        {
            Check(r, "cuStreamEndCapture");
            if (waits is not null && HasProgrammaticEdges) programmaticEdges = MakeProgrammatic(graph, waits);
            Check(cuGraphInstantiateWithFlags(&exec, graph, 0));
            return exec;
        }
        finally
        {
            if (graph != 0) cuGraphDestroy(graph);   // the executable graph keeps what it needs
        }
    }

    /// <summary>Queues an executable graph on stream.</summary>
    public static void Launch(nint exec, nint stream) => Check(cuGraphLaunch(exec, stream));

    /// <summary>Frees an executable graph (after the work queued with it).</summary>
    public static void DestroyGraph(nint exec)
    {
        if (exec != 0) cuGraphExecDestroy(exec);
    }
}

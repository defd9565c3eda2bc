// Compiles ILGPU kernels (IL -> PTX on CUDA) and loads them into typed launch delegates, failing fast with the
// kernel's name and ILGPU's message. All of it runs in the background, so that a model's weights load meanwhile:
// ILGPU compiles one kernel after another on one background thread (all at once on the thread pool was slower on an
// H200 host: 3.6 s against 2.9 s for 24 kernels), and the driver's compile of each kernel's PTX runs on the thread pool
// as soon as its PTX is there. A kernel's first launch waits for its own load, Complete for all; the loader adds up
// the time callers spent waiting, which is what the kernels cost a start-up beyond the work done meanwhile (not
// counted: driver calls of that work, such as uploads, that wait behind the driver's compiles).
// Kernels with inline PTX (tensor cores, streamed loads) are checked for the instructions it must produce: a trimmed
// publish that dropped the CudaAsm branches would otherwise run emulation-free kernels without them. PtxKernelLoader
// compiles the same kernels offline (no GPU) for tests and tools. Exercised by GpuBackend's start-up and by
// tests/GpuOpsTests.cs (CudaPtxHasItsInlineInstructions) and tests/GridDependencyTests.cs.
using System.Diagnostics;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

using LlamaRun.Core;
namespace LlamaRun.Backends.Gpu;

/// <summary>Inline-PTX instruction families a kernel must contain on CUDA (StreamedLoads: StreamedU4's loads).</summary>
[Flags]
public enum KernelNeeds { None = 0, Mma = 1, Ldmatrix = 2, StreamedLoads = 4 }

/// <summary>One compiled kernel: its name, PTX size, compile and load time, and (on CUDA) registers and local memory.</summary>
public sealed record KernelReport(string Name, int PtxChars, double CompileMs, double LoadMs, int Registers, int LocalBytes);

/// <summary>A loaded kernel: its launch delegate, and how many of its groups an SM holds at once (group size, dynamic shared bytes).</summary>
public sealed record LoadedKernel<T>(T Launch, Func<int, int, int> ActiveGroups) where T : Delegate;

/// <summary>A kernel being loaded: Launch is its launch delegate (waiting, the first time, for its load to finish).</summary>
public sealed class KernelHandle<T>(Task<LoadedKernel<T>>? load, Action<double>? waited = null) where T : Delegate
{
    private LoadedKernel<T>? _loaded;

    public T Launch => Loaded.Launch;

    private Tuple<int, int, int>? _active;   // the last ActiveGroups question and answer (every launch asks again)

    /// <summary>Groups of this size (and dynamic shared memory, in bytes) an SM runs at once: the driver's occupancy figure.</summary>
    public int ActiveGroups(int groupSize, int dynamicShared)
    {
        if (_active is { } last && last.Item1 == groupSize && last.Item2 == dynamicShared) return last.Item3;
        int groups = Loaded.ActiveGroups(groupSize, dynamicShared);
        _active = Tuple.Create(groupSize, dynamicShared, groups);
        return groups;
    }

    private LoadedKernel<T> Loaded => _loaded ??= Wait();

    private LoadedKernel<T> Wait()
    {
        if (load is null) throw new InvalidOperationException("kernel compiled offline only");
        long t0 = Stopwatch.GetTimestamp();
        var loaded = load.GetAwaiter().GetResult();   // a failed compile or load throws its GpuException here
        waited?.Invoke(Stopwatch.GetElapsedTime(t0).TotalSeconds);
        return loaded;
    }
}

/// <summary>Turns kernel methods into launch delegates of type T.</summary>
public interface IKernelLoader
{
    /// <summary>dynamicShared: the most dynamic shared memory a launch asks for (bytes); it also selects the largest shared carveout.</summary>
    KernelHandle<T> Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate;

    /// <summary>Waits for every load, throwing the first failure.</summary>
    void Complete();
}

/// <summary>A kernel that failed to compile or load, or lacks an instruction it needs.</summary>
public sealed class GpuException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Loads kernels on one accelerator in the background and keeps a report of each: ILGPU's compiles one after another
/// on a background thread, each driver load on the thread pool.
/// </summary>
public sealed class AcceleratorKernelLoader(Accelerator accelerator) : IKernelLoader
{
    /// <summary>Whether kernels wait for their predecessors themselves, so decode graphs launch them early (GridDependencies).</summary>
    public bool Programmatic { get; } = GridDependencies.Enabled && accelerator is CudaAccelerator c
        && c.Architecture >= CudaArchitecture.SM_90 && GpuNative.HasProgrammaticEdges;

    private readonly System.Collections.Concurrent.ConcurrentDictionary<nint, byte> _waiting = new();   // functions loaded retargeted

    /// <summary>Whether a CUDA function is one of this loader's kernels retargeted to wait for its predecessors (GridDependencies).</summary>
    public bool Waits(nint function) => _waiting.ContainsKey(function);

    private readonly List<KernelReport?> _reports = [];
    private readonly List<Task> _loads = [];
    private readonly long _start = Stopwatch.GetTimestamp();
    private long _lastDone;           // Stopwatch timestamp of the latest load to finish
    private Task _compiles = Task.CompletedTask;   // the chain of ILGPU compiles
    private long _waitedTicks;        // Stopwatch ticks callers spent waiting for loads

    /// <summary>One report a kernel, in load order (complete after Complete()).</summary>
    public IReadOnlyList<KernelReport> Reports
    {
        get
        {
            lock (_reports) return [.. _reports.OfType<KernelReport>()];
        }
    }

    /// <summary>Seconds from this loader's creation to the end of its last load (after Complete()).</summary>
    public double Seconds => Stopwatch.GetElapsedTime(_start, Interlocked.Read(ref _lastDone)).TotalSeconds;

    /// <summary>Seconds callers spent waiting for kernels: at first launches and in Complete.</summary>
    public double WaitedSeconds => (double)Interlocked.Read(ref _waitedTicks) / Stopwatch.Frequency;

    private void Waited(double seconds) => Interlocked.Add(ref _waitedTicks, (long)(seconds * Stopwatch.Frequency));

    public KernelHandle<T> Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate
    {
        int slot;
        lock (_reports)
        {
            slot = _reports.Count;
            _reports.Add(null);
        }
        // After the previous compile, failed or not, on a thread of its own (the pool may be busy loading weights).
        var compile = _compiles.ContinueWith(_ => Compile(name, kernel, needs, specialization), CancellationToken.None,
            TaskContinuationOptions.LongRunning, TaskScheduler.Default);
        _compiles = compile;
        Task<LoadedKernel<T>> load = compile.ContinueWith(c =>
        {
            var (compiled, ptxChars, compileMs) = c.GetAwaiter().GetResult();   // a failed compile throws its GpuException here
            return LoadCompiled<T>(name, compiled, ptxChars, compileMs, dynamicShared, slot);
        }, TaskScheduler.Default);
        _loads.Add(load);
        return new KernelHandle<T>(load, Waited);
    }

    // ILGPU's compile (IL to PTX on CUDA), checked for the inline-PTX instructions the kernel needs.
    private (CompiledKernel Compiled, int PtxChars, double CompileMs) Compile(string name, Delegate kernel, KernelNeeds needs, KernelSpecialization specialization)
    {
        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method);
        long t0 = Stopwatch.GetTimestamp();
        CompiledKernel compiled;
        try
        {
            compiled = accelerator.CompileKernel(entry, specialization);
        }
        catch (Exception e)
        {
            throw new GpuException($"kernel {name}: ILGPU could not compile it: {e.Message.Split('\n')[0]}", e);
        }
        double compileMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        int ptxChars = 0;
        if (compiled is PTXCompiledKernel ptx)
        {
            ptxChars = ptx.PTXAssembly.Length;
            if (PtxKernelLoader.Missing(ptx.PTXAssembly, needs) is { } missing)
                throw new GpuException($"kernel {name}: its PTX has no {missing} (the inline-PTX branch was removed; a trimmed build needs the trimmer settings of Directory.Build.props)");
            if (Programmatic)
            {
                try
                {
                    GridDependencies.Retarget(ptx);
                }
                catch (FormatException e)
                {
                    throw new GpuException($"kernel {name}: its PTX could not be retargeted for programmatic launch: {e.Message} (LLAMA_PDL=0 loads it as written)", e);
                }
            }
        }
        return (compiled, ptxChars, compileMs);
    }

    // The driver's load of a compiled kernel (its PTX JIT on CUDA), with the kernel's resources for the report.
    private LoadedKernel<T> LoadCompiled<T>(string name, CompiledKernel compiled, int ptxChars, double compileMs, int dynamicShared, int slot) where T : Delegate
    {
        long t1 = Stopwatch.GetTimestamp();
        Kernel loaded;
        try
        {
            loaded = accelerator.LoadKernel(compiled);   // binds the accelerator's context to this thread
        }
        catch (Exception e)
        {
            throw new GpuException($"kernel {name}: the driver could not load it: {e.Message.Split('\n')[0]}", e);
        }
        int registers = 0, local = 0;
        if (loaded is CudaKernel cuda)
        {
            if (dynamicShared > 0) GpuNative.AllowDynamicShared(cuda.FunctionPtr, dynamicShared);
            if (Programmatic) _waiting[cuda.FunctionPtr] = 0;
            (registers, local) = GpuNative.KernelResources(cuda.FunctionPtr);
        }
        var report = new KernelReport(name, ptxChars, compileMs, Stopwatch.GetElapsedTime(t1).TotalMilliseconds, registers, local);
        lock (_reports)
        {
            _reports[slot] = report;
            _lastDone = Math.Max(_lastDone, Stopwatch.GetTimestamp());
        }
        return new LoadedKernel<T>(loaded.CreateLauncherDelegate<T>(),
            (groupSize, shared) => Math.Max(1, accelerator.EstimateMaxActiveGroupsPerMultiprocessor(loaded, groupSize, shared)));
    }

    public void Complete()
    {
        long t0 = Stopwatch.GetTimestamp();
        try
        {
            Task.WaitAll([.. _loads]);
        }
        catch (AggregateException e)
        {
            throw e.InnerExceptions[0] is GpuException g ? g : new GpuException(e.InnerExceptions[0].Message, e.InnerExceptions[0]);
        }
        finally
        {
            Waited(Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
    }

    /// <summary>Waits for every load to end, failed or not (before the accelerator goes away).</summary>
    public void Drain()
    {
        foreach (var t in _loads)
        {
            try
            {
                t.Wait();
            }
            catch (AggregateException)
            {
                // reported by Complete or by the kernel's first launch
            }
        }
    }
}

/// <summary>Compiles kernels to PTX without a GPU (for sm_80, ILGPU's target), keeping each kernel's PTX.</summary>
public sealed class PtxKernelLoader : IKernelLoader, IDisposable
{
    private readonly PTXBackend _backend;

    public PtxKernelLoader(Context context, CudaInstructionSet instructionSet) =>
        _backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_80), CudaArchitecture.SM_80, instructionSet, null);

    /// <summary>(name, PTX) of every kernel loaded so far.</summary>
    public List<(string Name, string Ptx, KernelNeeds Needs)> Kernels { get; } = [];

    public KernelHandle<T> Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate
    {
        var compiled = (PTXCompiledKernel)_backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method), specialization);
        Kernels.Add((name, compiled.PTXAssembly, needs));
        return new KernelHandle<T>(null);
    }

    public void Complete()
    {
    }

    /// <summary>The first instruction a kernel needs that its PTX lacks, or null.</summary>
    public static string? Missing(string ptx, KernelNeeds needs)
    {
        if (needs.HasFlag(KernelNeeds.Mma) && !ptx.Contains("mma.sync.aligned", StringComparison.Ordinal)) return "mma.sync";
        if (needs.HasFlag(KernelNeeds.Ldmatrix) && !ptx.Contains("ldmatrix.sync.aligned", StringComparison.Ordinal)) return "ldmatrix";
        if (needs.HasFlag(KernelNeeds.StreamedLoads) && !ptx.Contains("ld.global.nc.L1::no_allocate", StringComparison.Ordinal)) return "ld.global.nc.L1::no_allocate";
        return null;
    }

    public void Dispose() => _backend.Dispose();
}

// Compiles ILGPU kernels (IL -> PTX on CUDA) and loads them into typed launch delegates, failing fast with the
// kernel's name and ILGPU's message. Tensor-core kernels are checked for the instructions their
// inline PTX must produce: a trimmed publish that dropped the CudaAsm branches would otherwise run emulation-free
// kernels without them. PtxKernelLoader compiles the same kernels offline (no GPU) for tests and tools.
// Exercised by GpuBackend's start-up and tests/KernelPtxTests.cs.
using System.Diagnostics;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

using LlamaRun.Core;
namespace LlamaRun.Backends.Gpu;

/// <summary>Inline-PTX instruction families a kernel must contain on CUDA.</summary>
[Flags]
public enum KernelNeeds { None = 0, Mma = 1, Ldmatrix = 2 }

/// <summary>One compiled kernel: its name, PTX size, compile and load time, and (on CUDA) registers and local memory.</summary>
public sealed record KernelReport(string Name, int PtxChars, double CompileMs, double LoadMs, int Registers, int LocalBytes);

/// <summary>Turns a kernel method into a launch delegate of type T.</summary>
public interface IKernelLoader
{
    /// <summary>dynamicShared: the most dynamic shared memory a launch asks for (bytes); it also selects the largest shared carveout.</summary>
    T Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate;
}

/// <summary>A kernel that failed to compile or load, or lacks an instruction it needs.</summary>
public sealed class GpuException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Loads kernels on one accelerator and keeps a report of each.</summary>
public sealed class AcceleratorKernelLoader(Accelerator accelerator) : IKernelLoader
{
    private readonly List<KernelReport> _reports = [];

    public IReadOnlyList<KernelReport> Reports => _reports;

    public T Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate
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
                throw new GpuException($"kernel {name}: its PTX has no {missing} (the inline-PTX branch was removed; a trimmed build needs the trimmer settings of tools/llama-run)");
        }
        t0 = Stopwatch.GetTimestamp();
        Kernel loaded;
        try
        {
            loaded = accelerator.LoadKernel(compiled);
        }
        catch (Exception e)
        {
            throw new GpuException($"kernel {name}: the driver could not load it: {e.Message.Split('\n')[0]}", e);
        }
        double loadMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        int registers = 0, local = 0;
        if (loaded is CudaKernel cuda)
        {
            if (dynamicShared > 0) GpuNative.AllowDynamicShared(cuda.FunctionPtr, dynamicShared);
            (registers, local) = GpuNative.KernelResources(cuda.FunctionPtr);
        }
        _reports.Add(new KernelReport(name, ptxChars, compileMs, loadMs, registers, local));
        return loaded.CreateLauncherDelegate<T>();
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

    public T Load<T>(string name, Delegate kernel, KernelNeeds needs = KernelNeeds.None, KernelSpecialization specialization = default, int dynamicShared = 0)
        where T : Delegate
    {
        var compiled = (PTXCompiledKernel)_backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method), specialization);
        Kernels.Add((name, compiled.PTXAssembly, needs));
        return null!;
    }

    /// <summary>The first instruction a kernel needs that its PTX lacks, or null.</summary>
    public static string? Missing(string ptx, KernelNeeds needs)
    {
        if (needs.HasFlag(KernelNeeds.Mma) && !ptx.Contains("mma.sync.aligned", StringComparison.Ordinal)) return "mma.sync";
        if (needs.HasFlag(KernelNeeds.Ldmatrix) && !ptx.Contains("ldmatrix.sync.aligned", StringComparison.Ordinal)) return "ldmatrix";
        return null;
    }

    public void Dispose() => _backend.Dispose();
}

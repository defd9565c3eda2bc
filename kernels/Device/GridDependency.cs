// Where a kernel waits for the kernel before it under programmatic dependent launch (engine/Backends/Gpu/
// GridDependencies.cs): a kernel that calls Wait gets griddepcontrol.wait there, after what it may do before the
// kernel before it has ended (ask L2 for weights nothing writes); any other kernel gets it as its first instruction.
// On CUDA a PTX comment that the loader replaces; nothing elsewhere. Exercised by tests/GridDependencyTests.cs.
using System.Runtime.CompilerServices;
using ILGPU.Runtime.Cuda;

namespace LlamaRun.Kernels.Device;

public static class GridDependency
{
    /// <summary>The marker GridDependencies.Patch replaces by griddepcontrol.wait.</summary>
    public const string WaitMarker = "/* griddepcontrol.wait */";

    /// <summary>Waits (under programmatic launch) until the grids this kernel depends on have completed and their writes are visible.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Wait()
    {
        if (CudaAsm.IsSupported) CudaAsm.Emit(WaitMarker);
    }
}

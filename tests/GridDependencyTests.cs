// Programmatic dependent launch (engine/Backends/Gpu/GridDependencies.cs): every kernel's PTX, patched for sm_90, waits
// for the grids it depends on before anything else, and is otherwise unchanged. Offline, without a GPU.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~GridDependencyTests"
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using LlamaRun.Backends.Gpu;
using LlamaRun.Kernels;
using LlamaRun.Kernels.Device;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public sealed class GridDependencyTests(ITestOutputHelper output)
{
    /// <summary>Every kernel the backend loads, compiled offline to PTX for sm_80 (also read by GpuOpsTests).</summary>
    internal static readonly IReadOnlyList<(string Name, string Ptx, KernelNeeds Needs)> Kernels = GpuBackend.CompilePtx(CudaInstructionSet.ISA_80);

    // The instruction lines of an entry body (no labels, directives, comments or braces).
    private static IEnumerable<string> Instructions(string ptx) =>
        ptx[ptx.IndexOf(".entry", StringComparison.Ordinal)..].Split('\n').Select(l => l.Trim())
            .Where(l => l.Length > 0 && !l.StartsWith('.') && !l.StartsWith("//", StringComparison.Ordinal) && !l.EndsWith(':') && l != "{" && l != "}" && l != ")");

    // The wait is each kernel's first instruction (after reading its parameters): nothing is read or written before it.
    [Fact]
    public void EveryKernelWaitsFirst()
    {
        Assert.NotEmpty(Kernels);
        foreach (var (name, ptx, _) in Kernels)
        {
            Assert.DoesNotContain("griddepcontrol", ptx);
            string patched = GridDependencies.Patch(ptx);
            Assert.Contains("\n.target sm_90", patched);
            Assert.Single(Instructions(patched), l => l.StartsWith("griddepcontrol", StringComparison.Ordinal));
            Assert.Equal("griddepcontrol.wait;", Instructions(patched).First());
            // The rest of the kernel is as ILGPU wrote it.
            Assert.Equal(Instructions(ptx), Instructions(patched).Skip(1));
        }
        output.WriteLine($"{Kernels.Count} kernels patched");
    }

    [Fact]
    public void RetargetReplacesTheCompiledKernelsPtx()
    {
        using var context = Context.Create(b => b.CPU());
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_80), CudaArchitecture.SM_80, CudaInstructionSet.ISA_80, null);
        Action<ArrayView<F4>, StreamedU4, ArrayView<float>, int, int> gemv = MatMulKernels.GemvBf16<SixteenLoads>;
        var kernel = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(gemv.Method), default);
        string before = kernel.PTXAssembly;
        GridDependencies.Retarget(kernel);
        Assert.Equal(GridDependencies.Patch(before), kernel.PTXAssembly);
        Assert.Contains("griddepcontrol.wait;", kernel.PTXAssembly);
    }

    [Fact]
    public void PatchRejectsWhatIsNotAKernel()
    {
        Assert.Throws<FormatException>(() => GridDependencies.Patch("not ptx"));
        Assert.Throws<FormatException>(() => GridDependencies.Patch(".version 8.0\n.target sm_80\n.address_size 64\n"));
    }
}

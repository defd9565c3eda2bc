// Skip attributes for tests that need a CUDA GPU ([CudaFact], [CudaTheory]) or only NVRTC ([NvrtcFact]).
// xunit 2 has no dynamic skip, so the Skip text is set when the attribute is built and the device is absent.
// Used by tests/BackendOpsTests.cs and tests/CudaCompileTests.cs.
using LlamaRun.Backends.Cuda;
using Xunit;

namespace LlamaRun.Tests;

internal static class CudaAvailability
{
    private static readonly Lazy<string?> GpuReason = new(() => CudaBackend.IsAvailable(out string r) ? null : r);
    private static readonly Lazy<string?> NvrtcReason = new(() => KernelCompiler.IsAvailable(out string r) ? null : r);

    public static string? WhyNoGpu => GpuReason.Value;
    public static string? WhyNoNvrtc => NvrtcReason.Value;
}

public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (CudaAvailability.WhyNoGpu is { } why) Skip = $"CUDA unavailable: {why}";
    }
}

public sealed class CudaTheoryAttribute : TheoryAttribute
{
    public CudaTheoryAttribute()
    {
        if (CudaAvailability.WhyNoGpu is { } why) Skip = $"CUDA unavailable: {why}";
    }
}

public sealed class NvrtcFactAttribute : FactAttribute
{
    public NvrtcFactAttribute()
    {
        if (CudaAvailability.WhyNoNvrtc is { } why) Skip = $"NVRTC unavailable: {why}";
    }
}

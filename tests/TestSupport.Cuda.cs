// Skip attributes for tests that need a CUDA GPU ([CudaFact], [CudaTheory]).
// xunit 2 has no dynamic skip, so the Skip text is set when the attribute is built and the device is absent.
// Used by tests/GpuOpsTests.cs.
using LlamaRun.Backends.Gpu;
using Xunit;

namespace LlamaRun.Tests;

internal static class CudaAvailability
{
    private static readonly Lazy<string?> GpuReason = new(() => GpuBackend.IsCudaAvailable(out string r) ? null : r);

    public static string? WhyNoGpu => GpuReason.Value;
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

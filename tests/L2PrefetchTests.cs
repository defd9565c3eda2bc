// The L2 prefetch hint of the streamed loads (engine/Backends/Gpu/L2Prefetch.cs): on every one of them in every kernel
// that has them, and nowhere else. Offline, on the PTX the backend's kernels compile to.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~L2PrefetchTests"
using System.Text.RegularExpressions;
using LlamaRun.Backends.Gpu;
using LlamaRun.Kernels;
using Xunit;

namespace LlamaRun.Tests;

public sealed class L2PrefetchTests
{
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    [InlineData(256)]
    public void EveryStreamedLoadTakesTheHint(int bytes)
    {
        int kernels = 0;
        foreach (var (name, ptx, needs) in GridDependencyTests.Kernels)
        {
            string patched = L2Prefetch.Patch(ptx, bytes);
            int loads = Regex.Count(ptx, @"ld\.global\.nc\.L1::no_allocate\.v4\.b32");
            Assert.Equal(needs.HasFlag(KernelNeeds.StreamedLoads), loads > 0);
            Assert.Equal(loads, Regex.Count(patched, $@"ld\.global\.nc\.L1::no_allocate\.L2::{bytes}B\.v4\.b32 "));
            Assert.Equal(0, Regex.Count(patched, @"ld\.global\.nc\.L1::no_allocate\.v4\.b32"));
            // Nothing else changes.
            Assert.Equal(ptx, patched.Replace($".L2::{bytes}B", "", StringComparison.Ordinal));
            if (loads > 0) kernels++;
        }
        Assert.Equal(10, kernels);   // the GEMVs and the decode attention variants (GpuOpsTests counts their loads)
    }

    [Fact]
    public void OnlyTheThreeSizes() => Assert.Throws<ArgumentOutOfRangeException>(() => L2Prefetch.Patch("", 32));
}

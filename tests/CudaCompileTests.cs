// Compiles every embedded kernel with NVRTC for compute_80 and compute_90 (no GPU needed; skips without NVRTC).
// CI installs Debian's libnvrtc11.2 (non-free). Run: dotnet test tests/Tests.csproj --filter CudaCompileTests
using LlamaRun.Backends.Cuda;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public sealed class CudaCompileTests(ITestOutputHelper output)
{
    [NvrtcFact]
    public void EveryKernelFileIsEmbedded()
    {
        var names = KernelCompiler.Sources().Select(s => s.FileName).ToArray();
        Assert.Equal(["activation.cu", "attention.cu", "embedding.cu", "matmul.cu", "rmsnorm.cu", "rope.cu", "softmax.cu"], names);
    }

    [NvrtcFact]
    public void EveryKernelCompilesForAmpereAndHopper()
    {
        var compiler = new KernelCompiler(cacheDir: null);
        foreach (string target in new[] { "compute_80", "compute_90" })
        {
            foreach (var source in KernelCompiler.Sources())
            {
                var compiled = compiler.Compile(source, target);
                string ptx = System.Text.Encoding.ASCII.GetString(compiled.Image);
                foreach (var entry in CudaKernels.EntryPoints.Where(e => source.Source.Contains($" {e}(")))
                    Assert.Contains($".entry {entry}(", ptx);
                output.WriteLine($"{source.FileName} {target}: {compiled.Image.Length} bytes of PTX (NVRTC {KernelCompiler.NvrtcVersion})");
            }
        }
    }

    [NvrtcFact]
    public void EveryEntryPointIsDefinedInSomeKernelFile()
    {
        var all = string.Join("\n", KernelCompiler.Sources().Select(s => s.Source));
        var missing = CudaKernels.EntryPoints.Where(e => !all.Contains($"extern \"C\" __global__ void {e}(")
            && !all.Contains($"extern \"C\" __global__ void __launch_bounds__(256) {e}(")
            && !all.Contains($"extern \"C\" __global__ void __launch_bounds__(128) {e}(")
            && !all.Contains($"extern \"C\" __global__ void __launch_bounds__(128, 3) {e}(")).ToList();
        Assert.Empty(missing);
    }

    [NvrtcFact]
    public void CompileErrorNamesTheFileAndCarriesTheLog()
    {
        var compiler = new KernelCompiler(cacheDir: null);
        var bad = new KernelSource("broken.cu", "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }");
        var e = Assert.Throws<NvrtcException>(() => compiler.Compile(bad, "compute_80"));
        Assert.Contains("broken.cu", e.Message);
        Assert.Contains("undefined_name", e.Message);
    }

    [NvrtcFact]
    public void CacheReturnsTheSameImage()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"llama-kernels-{Guid.NewGuid():N}");
        try
        {
            var compiler = new KernelCompiler(dir);
            var source = KernelCompiler.Sources().First(s => s.FileName == "rmsnorm.cu");
            var first = compiler.Compile(source, "compute_80");
            Assert.Single(Directory.GetFiles(dir));
            var second = compiler.Compile(source, "compute_80");
            Assert.Equal(first.Image, second.Image);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }
}

// Every CUDA op against the CPU op on the shared case table (NMSE, max abs, NaN/Inf parity, guard rows): DESIGN R8,
// the bf16-compute variants (rounding as a bf16 framework) and Round included.
// Skips without a GPU. Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~BackendOpsTests.Rope"
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Cuda;
using LlamaRun.Model;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

/// <summary>One CPU and one CUDA backend shared by all cases of the class.</summary>
public sealed class BackendPair : IDisposable
{
    private readonly Lazy<CudaBackend> _cuda = new(() => new CudaBackend());
    private readonly Lazy<CudaBackend> _cudaFull = new(() => new CudaBackend(fullPrecision: true));
    public CpuBackend Cpu { get; } = new();
    public CudaBackend Cuda => _cuda.Value;
    public CudaBackend CudaFull => _cudaFull.Value;

    public void Dispose()
    {
        if (_cuda.IsValueCreated) _cuda.Value.Dispose();
        if (_cudaFull.IsValueCreated) _cudaFull.Value.Dispose();
        Cpu.Dispose();
    }
}

public sealed class BackendOpsTests(BackendPair backends, ITestOutputHelper output) : IClassFixture<BackendPair>
{
    private void Check(string name)
    {
        var c = OpCases.Find(name);
        var r = OpCheck.Run(backends.Cpu, c.FullPrecision ? backends.CudaFull : backends.Cuda, c);
        output.WriteLine($"{r.Shape}: nmse {r.Nmse:E2}, max abs {r.MaxAbs:E2} {r.Detail}");
        Assert.True(r.Pass, $"{r.Shape}: {r.Detail}");
    }

    [CudaTheory, MemberData(nameof(OpCases.Embedding), MemberType = typeof(OpCases))]
    public void Embedding(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.RmsNorm), MemberType = typeof(OpCases))]
    public void RmsNorm(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.AddRmsNorm), MemberType = typeof(OpCases))]
    public void AddRmsNorm(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.MatMul), MemberType = typeof(OpCases))]
    public void MatMul(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.Rope), MemberType = typeof(OpCases))]
    public void Rope(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.Attention), MemberType = typeof(OpCases))]
    public void Attention(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.Rerotate), MemberType = typeof(OpCases))]
    public void Rerotate(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.SwiGlu), MemberType = typeof(OpCases))]
    public void SwiGlu(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.Add), MemberType = typeof(OpCases))]
    public void Add(string name) => Check(name);

    [CudaTheory, MemberData(nameof(OpCases.Argmax), MemberType = typeof(OpCases))]
    public void Argmax(string name) => Check(name);

    /// <summary>In-place rounding to bf16 and f16 values, bit-exact against the CPU.</summary>
    public static TheoryData<string> RoundCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in OpCheckCases.All.Where(c => c.Op == OpKind.Round)) data.Add(c.Name);
        return data;
    }

    [CudaTheory, MemberData(nameof(RoundCases))]
    public void Round(string name) => Check(name);

    [CudaFact]
    public void F16ComputeIsRefusedClearly()
    {
        var g = backends.Cuda;
        using var x = g.Alloc(DType.F32, 1, 8);
        using var w = g.Alloc(DType.F32, 1, 8);
        var e = Assert.Throws<NotSupportedException>(() => g.RmsNorm(x, w, x, 1e-5f, DType.F16));
        Assert.Contains("F16", e.Message);
    }

    [CudaFact]
    public void ShapeErrorsAreArgumentExceptions()
    {
        var g = backends.Cuda;
        using var x = g.Alloc(DType.F32, 2, 64);
        using var w = g.Alloc(DType.BF16, 8, 63);
        using var y = g.Alloc(DType.F32, 2, 8);
        var e = Assert.Throws<ArgumentException>(() => g.MatMul(x, w, y));
        Assert.Contains("does not match", e.Message);
        using var table = g.Alloc(DType.BF16, 10, 64);
        Assert.Throws<ArgumentOutOfRangeException>(() => g.Embedding([3, 10], table, y));
    }

    [CudaFact]
    public void FullPrecisionKeepsAnF32CacheAndMatchesTheCpuModel()
    {
        var g = backends.CudaFull;
        Assert.Equal(4, g.KvElementSize);
        using (var cache = g.AllocKvCache(1, 4, 2, 64)) Assert.Equal(DType.F32, cache.K.DType);
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var ids = Enumerable.Range(0, 300).Select(i => (i * 7919 + 13) % config.VocabSize).ToArray();
        float[] Logits(IBackend b)
        {
            using var w = LlamaWeights.Load(dir, config, b);
            using var m = Llama.Create(config, w, b, ids.Length, LlamaRun.Rope.RopeMethods.FromConfig(config), maxBatch: 128);
            var logits = new float[ids.Length * config.VocabSize];
            m.Forward(ids, 0, LogitsRows.All, logits);
            return logits;
        }
        var expected = Logits(backends.Cpu);
        var actual = Logits(g);
        double se = 0, sr = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            se += Math.Pow(actual[i] - expected[i], 2);
            sr += (double)expected[i] * expected[i];
        }
        output.WriteLine($"austen, 300 tokens in chunks of 128, full f32 GPU vs CPU: logits NMSE {se / sr:E2}");
        Assert.True(se / sr < 1e-9, $"NMSE {se / sr}");
    }

    [Fact]
    public void AvailabilityIsExplainedInOneLine()
    {
        if (CudaBackend.IsAvailable(out string reason)) return;
        Assert.False(string.IsNullOrWhiteSpace(reason));
        Assert.DoesNotContain('\n', reason);
        Assert.Null(CudaBackend.TryCreate(out string again));
        Assert.Equal(reason, again);
    }

    [Fact]
    public void CaseTableIsComplete()
    {
        foreach (var op in Enum.GetValues<OpKind>()) Assert.Contains(OpCheckCases.All, c => c.Op == op);
        Assert.Equal(OpCheckCases.All.Count, OpCheckCases.All.Select(c => c.Name).Distinct().Count());
    }
}

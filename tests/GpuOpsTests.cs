// Every GPU kernel against the CPU op on the shared case table (NMSE, max abs, NaN/Inf parity, guard rows): DESIGN R8.
// Two candidates run the same ILGPU kernels: ILGPU's CPU accelerator (always, small cases, so CI checks the kernels
// without a GPU) and CUDA (every case; skipped without a GPU). Whole models: hf-tiny against transformers on both,
// stories260K against llama2.c on the CPU accelerator, austen against the CPU backend on CUDA.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~GpuOpsTests"
using System.Globalization;
using ILGPU.Runtime.Cuda;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Ops;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Gpu;
using LlamaRun.Kernels;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

/// <summary>The CPU reference and the GPU backends, each created once for all cases of the class.</summary>
public sealed class GpuBackends : IDisposable
{
    private readonly Lazy<GpuBackend> _cuda = new(() => GpuBackend.TryCreateCuda(out string why) ?? throw new InvalidOperationException(why));
    private readonly Lazy<GpuBackend> _cudaFull = new(() => GpuBackend.TryCreateCuda(out string why, fullPrecision: true) ?? throw new InvalidOperationException(why));
    private readonly Lazy<GpuBackend> _host = new(() => GpuBackend.CreateCpuAccelerator());
    private readonly Lazy<GpuBackend> _hostFull = new(() => GpuBackend.CreateCpuAccelerator(fullPrecision: true));
    private readonly Lazy<GpuBackend> _hostTileFull = new(() => GpuBackend.CreateCpuAccelerator(decodeTile: DecodeTile.FullFour));
    public CpuBackend Cpu { get; } = new();

    public GpuBackend Get(string device, bool fullPrecision) => (device, fullPrecision) switch
    {
        ("cuda", false) => _cuda.Value,
        ("cuda", true) => _cudaFull.Value,
        ("ilgpu-cpu-tilefull", false) => _hostTileFull.Value,
        (_, false) => _host.Value,
        _ => _hostFull.Value,
    };

    public void Dispose()
    {
        foreach (var b in new[] { _cuda, _cudaFull, _host, _hostFull, _hostTileFull })
            if (b.IsValueCreated) b.Value.Dispose();
        Cpu.Dispose();
    }
}

public sealed class GpuOpsTests(GpuBackends backends, ITestOutputHelper output) : IClassFixture<GpuBackends>
{
    // The CPU accelerator runs each GPU thread as a .NET thread step (a shuffle costs ~0.3 ms), so it takes the cases
    // up to this much work (tokens x features x outputs + attention scores x head dim): a few seconds in all.
    private const long HostWork = 150_000;

    public static TheoryData<string> HostCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in OpCases.All.Where(c => c.Work <= HostWork)) data.Add(c.Name);
        return data;
    }

    public static TheoryData<string> AllCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in OpCases.All) data.Add(c.Name);
        return data;
    }

    private void Check(string device, string name)
    {
        var c = OpCases.Find(name);
        var r = OpCheck.Run(backends.Cpu, backends.Get(device, c.FullPrecision), c);
        output.WriteLine($"{device} {r.Shape}: nmse {r.Nmse:E2}, max abs {r.MaxAbs:E2} {r.Detail}");
        Assert.True(r.Pass, $"{device} {r.Shape}: {r.Detail}");
    }

    [Theory, MemberData(nameof(HostCases))]
    public void OnCpuAccelerator(string name) => Check("ilgpu-cpu", name);

    // The attention cases again with the decode kernel's full tiles without guards (LLAMA_ATTN_TILE=full) for one query
    // head a lane.
    public static TheoryData<string> HostAttentionCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in OpCases.All.Where(c => c.Work <= HostWork && c.Op == "attention" && !c.FullPrecision)) data.Add(c.Name);
        return data;
    }

    [Theory, MemberData(nameof(HostAttentionCases))]
    public void OnCpuAcceleratorWithFullTiles(string name) => Check("ilgpu-cpu-tilefull", name);

    [CudaTheory, MemberData(nameof(AllCases))]
    public void OnCuda(string name) => Check("cuda", name);

    // Every case, the large ones that only CUDA checks included, sets up and runs on the CPU reference, and its seeded
    // inputs make two runs agree bit for bit (so a reference result never depends on the run).
    [Fact]
    public void EveryCaseRunsOnTheCpuReproducibly()
    {
        foreach (var c in OpCases.All)
        {
            var r = OpCheck.Run(backends.Cpu, backends.Cpu, c with { MaxNmse = 0 });
            Assert.True(r.Pass, $"{c.Name}: {r.Detail}");
        }
    }

    // Every op case class (one per op) has cases in the table, and the CPU accelerator runs at least one of each.
    private static IEnumerable<Type> OpCaseTypes() =>
        typeof(OpCase).Assembly.GetTypes().Where(t => t.IsSubclassOf(typeof(OpCase)) && !t.IsAbstract);

    [Fact]
    public void HostCasesCoverEveryOp()
    {
        var host = OpCases.All.Where(c => c.Work <= HostWork).ToList();
        foreach (var op in OpCaseTypes()) Assert.Contains(host, c => c.GetType() == op);
        Assert.Contains(host, c => c is AttentionCase { T: > 1 });   // prefill (flash or split) as well as decode
        Assert.Contains(host, c => c is AttentionCase { T: 1 });
        Assert.Contains(host, c => c is MatMulCase { T: > MatMulKernels.GemvMaxTokens, Weight: DType.BF16, FullPrecision: false });
        Assert.Contains(host, c => c is RopeCase { Remap: not null });                        // index remaps: far branch
        Assert.Contains(host, c => c is AttentionCase { Remap: not null, T: > 1 });
        Assert.Contains(host, c => c is AttentionCase { Remap: not null, T: 1 });
    }

    [Fact]
    public void CaseTableIsComplete()
    {
        Assert.True(OpCaseTypes().Count() >= 11);
        foreach (var op in OpCaseTypes()) Assert.Contains(OpCases.All, c => c.GetType() == op);
        Assert.Equal(OpCases.All.Count, OpCases.All.Select(c => c.Name).Distinct().Count());
    }

    // The read probe's kernel reads every 16-byte vector: its XOR fold equals the host's over words placed in the buffer.
    [Fact]
    public void ReadProbeReadsEveryVector()
    {
        var g = backends.Get("ilgpu-cpu", false);
        using var probe = g.CreateReadProbe(64 * 1024);
        var rng = new Random(3);
        var words = Enumerable.Range(0, 4 * 1000).Select(_ => (uint)rng.Next()).ToArray();
        probe.Fill(words);
        uint expected = words.Aggregate(0u, (a, w) => a ^ w);
        Assert.Equal(expected, probe.Checksum());
        Assert.StartsWith("64 KiB read", probe.Description);
    }

    // Kernels compile in the background from the backend's creation: ops called at once wait for their own kernel, and
    // the time they waited is what WaitUntilReady's caller sees added; a backend disposed mid-compile waits, then frees.
    [Fact]
    public void OpsBeforeTheKernelsAreReadyWaitForThem()
    {
        using (var g = GpuBackend.CreateCpuAccelerator())
        {
            var c = OpCases.All.First(c => c.Source == "small prefill, flash");
            var r = OpCheck.Run(backends.Cpu, g, c);
            Assert.True(r.Pass, $"{c.Name}: {r.Detail}");
            Assert.True(g.KernelWaitSeconds > 0, "the first op waited for its kernel");
            g.WaitUntilReady();
            Assert.Equal(g.Kernels.Count, g.Kernels.Select(k => k.Name).Distinct().Count());
            Assert.True(g.KernelLoadSeconds >= g.Kernels.Max(k => (k.CompileMs + k.LoadMs) / 1000) * 0.99);
        }
        using (GpuBackend.CreateCpuAccelerator())
        {
            // disposed while compiling
        }
    }

    // The fused gate/up GEMV computes the same dot products (one RowDot) and silu (one Silu) as the GEMV then SwiGlu,
    // so decode's MLP is bit for bit what it was before the fusion.
    [Fact]
    public void FusedSwiGluGemvEqualsGemvThenSwiGlu()
    {
        var g = backends.Get("ilgpu-cpu", false);
        const int n = 128, ff = 40;
        var rng = new Random(9);
        var xs = Enumerable.Range(0, n).Select(_ => rng.NextSingle() * 2 - 1).ToArray();
        var ws = Enumerable.Range(0, 2 * ff * n).Select(_ => DTypes.F32ToBF16((rng.NextSingle() * 2 - 1) * 0.1f)).ToArray();
        Tensor x, w;
        unsafe
        {
            fixed (float* px = xs) x = g.Upload(DType.F32, 1, n, (nint)px);
            fixed (ushort* pw = ws) w = g.Upload(DType.BF16, 2 * ff, n, (nint)pw);
        }
        using (x)
        using (w)
        using (var both = g.Alloc(DType.F32, 1, 2 * ff))
        using (var fused = g.Alloc(DType.F32, 1, ff))
        using (var plain = g.Alloc(DType.F32, 1, ff))
        {
            g.MatMulSwiGlu(x, w, fused);
            g.MatMul(x, w, both);
            g.SwiGlu(both.SliceCols(0, ff), both.SliceCols(ff, ff), plain);
            var a = new float[ff];
            var b = new float[ff];
            g.Download(fused, a);
            g.Download(plain, b);
            Assert.Equal(b, a);
        }
    }

    [Fact]
    public void F16ComputeIsRefusedClearly()
    {
        var g = backends.Get("ilgpu-cpu", false);
        using var x = g.Alloc(DType.F32, 1, 8);
        using var w = g.Alloc(DType.F32, 1, 8);
        var e = Assert.Throws<NotSupportedException>(() => g.RmsNorm(x, w, x, 1e-5f, DType.F16));
        Assert.Contains("F16", e.Message);
    }

    [Fact]
    public void ShapeErrorsAreArgumentExceptions()
    {
        var g = backends.Get("ilgpu-cpu", false);
        using var x = g.Alloc(DType.F32, 2, 64);
        using var w = g.Alloc(DType.BF16, 8, 63);
        using var y = g.Alloc(DType.F32, 2, 8);
        var e = Assert.Throws<ArgumentException>(() => g.MatMul(x, w, y));
        Assert.Contains("does not match", e.Message);
        using var table = g.Alloc(DType.BF16, 10, 64);
        Assert.Throws<ArgumentOutOfRangeException>(() => g.Embedding([3, 10], table, x));
    }

    // The decode attention's group size on a 132-SM GPU: more warps while the groups are few, 4 once they fill it.
    [Fact]
    public void DecodeAttentionTakesMoreWarpsForFewGroups()
    {
        if (Environment.GetEnvironmentVariable("LLAMA_ATTN_DECODE_WARPS") is not null) return;   // a tuning run's override
        Assert.Equal(16, GpuKernels.DecodeWarpsFor(32, 1, 132));     // Llama-2-7B, one split a head (a short context)
        Assert.Equal(8, GpuKernels.DecodeWarpsFor(512, 1, 132));     // 16 splits a head
        Assert.Equal(4, GpuKernels.DecodeWarpsFor(1024, 1, 132));    // 16k keys: 32 splits a head
        Assert.Equal(8, GpuKernels.DecodeWarpsFor(128, 4, 132));     // Llama-3-8B at 4k: four query heads a lane
        Assert.Equal(4, GpuKernels.DecodeWarpsFor(512, 4, 132));     // and at 16k
        Assert.Equal(4, GpuKernels.DecodeWarpsFor(512, 8, 132));     // Llama-3-70B at 16k
    }

    // The decode attention's splits on a 132-SM GPU: the groups an SM holds, in whole waves where the heads allow, each
    // split at least 256 keys (MinSplit) of the step's bucket.
    [Fact]
    public void DecodeAttentionSplitsFillWholeWaves()
    {
        if (Environment.GetEnvironmentVariable("LLAMA_ATTN_WAVES") is not null || Environment.GetEnvironmentVariable("LLAMA_ATTN_MINSPLIT") is not null) return;
        Assert.Equal(33, GpuKernels.DecodeSplits(32, 17408, 8, 132));   // Llama-2-7B at 16k, 8 groups an SM: 1,056 = 8 x 132
        Assert.Equal(20, GpuKernels.DecodeSplits(32, 17408, 5, 132));   // 5 an SM: 640 of the 660 slots
        Assert.Equal(66, GpuKernels.DecodeSplits(8, 17408, 8, 132));    // Llama-3-8B at 16k: 528 = 4 x 132 (68 splits allowed)
        Assert.Equal(4, GpuKernels.DecodeSplits(32, 1024, 8, 132));     // a short context: 256 keys a split
        Assert.Equal(1, GpuKernels.DecodeSplits(32, 256, 8, 132));
        Assert.Equal(1, GpuKernels.DecodeSplits(2048, 17408, 8, 132));  // more queries than the GPU holds groups
    }

    [Fact]
    public void CudaAvailabilityIsExplainedInOneLine()
    {
        if (GpuBackend.IsCudaAvailable(out string reason)) return;
        Assert.False(string.IsNullOrWhiteSpace(reason));
        Assert.DoesNotContain('\n', reason);
        Assert.Null(GpuBackend.TryCreateCuda(out string again));
        Assert.Equal(reason, again);
    }

    [Fact]
    public void CudaPtxHasItsInlineInstructions()
    {
        var kernels = GridDependencyTests.Kernels;   // every kernel's PTX for sm_80, compiled once for both classes
        Assert.NotEmpty(kernels);
        var tensorCore = kernels.Where(k => k.Needs.HasFlag(KernelNeeds.Mma)).ToList();
        Assert.Contains(tensorCore, k => k.Name == "gemm_bf16");
        Assert.Contains(tensorCore, k => k.Name == "attention_flash_hd128");
        Assert.Contains(tensorCore, k => k.Name == "attention_flash_near_hd128");   // an index remap's two passes
        Assert.Contains(tensorCore, k => k.Name == "attention_flash_far_hd64");
        foreach (var (name, ptx, needs) in tensorCore)
        {
            Assert.Contains("mma.sync.aligned.m16n8k16", ptx);
            if (needs.HasFlag(KernelNeeds.Ldmatrix)) Assert.Contains("ldmatrix.sync.aligned", ptx);
            Assert.DoesNotContain("EmulatedTensorCores", ptx);
            output.WriteLine($"{name}: {ptx.Length} chars of PTX");
        }
        // The decode GEMVs read their weight rows by StreamedU4's loads, one a 16-byte vector: 16 a block of a row (8 for
        // long rows), twice (the full blocks and the last, partial one). The decode attention reads K and V by them: a
        // tile's four steps of each (one query head a lane), or a step's pair before the loop and the next step's in it.
        // (ILGPU leaves the plain loads of the CPU path behind a constant false predicate, which ptxas removes.)
        var streamed = kernels.Where(k => k.Needs.HasFlag(KernelNeeds.StreamedLoads)).Select(k => k.Name).Order().ToList();
        Assert.Equal(["attention_decode_g1", "attention_decode_g2", "attention_decode_g4", "attention_decode_g8",
            "gemv_bf16", "gemv_bf16_add_norm", "gemv_bf16_add_norm_long", "gemv_bf16_long", "gemv_bf16_rope", "gemv_bf16_swiglu"], streamed);
        foreach (var (name, ptx, _) in kernels.Where(k => k.Needs.HasFlag(KernelNeeds.StreamedLoads)))
        {
            bool attention = name.StartsWith("attention_decode", StringComparison.Ordinal);
            int loads = name switch
            {
                "attention_decode_g1" => 8,
                _ when attention => 4,
                "gemv_bf16_long" or "gemv_bf16_add_norm_long" => 16,
                _ => 32,
            };
            Assert.Equal(loads, System.Text.RegularExpressions.Regex.Count(ptx, @"ld\.global\.nc\.L1::no_allocate\.v4\.b32"));
            Assert.Null(PtxKernelLoader.Missing(ptx, KernelNeeds.StreamedLoads));
        }
        Assert.Equal("ld.global.nc.L1::no_allocate", PtxKernelLoader.Missing(kernels.Single(k => k.Name == "gemv_bf16_any").Ptx, KernelNeeds.StreamedLoads));
    }

    // The decode attention with full tiles (LLAMA_ATTN_TILE=full) reads K and V by StreamedU4's loads from the addresses
    // it steps along: a tile's four steps of each in the full tiles, and again in the last, guarded one.
    [Fact]
    public void CudaPtxOfTheFullTileDecodeStreamsItsLoads()
    {
        // Only what a Llama-2-7B-shaped model loads beside the core set: decode for one query head a lane, no flash.
        var g1 = GpuBackend.CompilePtx(CudaInstructionSet.ISA_80, new GpuKernelSet(false, [], [1]), bf16Only: true, DecodeTile.FullFour)
            .Single(k => k.Name == "attention_decode_g1");
        Assert.Equal(16, System.Text.RegularExpressions.Regex.Count(g1.Ptx, @"ld\.global\.nc\.L1::no_allocate\.v4\.b32"));
        Assert.Null(PtxKernelLoader.Missing(g1.Ptx, KernelNeeds.StreamedLoads));
    }

    // hf-tiny (head dim 16, 2 layers) against transformers' logits on the first tokens of its reference (causal, so a
    // prefix has the same logits): a prefill, then decode steps, in full f32 with the CPU oracle test's bound.
    // The CPU accelerator takes 8 tokens (a warp shuffle costs it ~0.3 ms), CUDA 64.
    [Theory]
    [InlineData("ilgpu-cpu", 8)]
    [InlineData("cuda", 64)]
    public void HfTinyMatchesTransformers(string device, int tokens)
    {
        if (device == "cuda" && !GpuBackend.IsCudaAvailable(out _)) return;
        string dir = Path.Combine(LoaderTestSupport.HfTiny, "default");
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var reference = SafeTensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        int[] ids = reference.ReadI64("input_ids").Select(v => (int)v).Take(tokens).ToArray();
        float[] expected = reference.ReadF32("logits");
        var backend = backends.Get(device, fullPrecision: true);
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, ids.Length, RopeMethods.FromConfig(config));
        int v = config.VocabSize, prefill = ids.Length - 2;
        var logits = new float[ids.Length * v];
        model.Forward(ids[..prefill], 0, LogitsRows.All, logits.AsSpan(0, prefill * v));
        for (int p = prefill; p < ids.Length; p++) model.Forward([ids[p]], p, LogitsRows.Last, logits.AsSpan(p * v, v));
        double max = 0;
        for (int i = 0; i < logits.Length; i++) max = Math.Max(max, Math.Abs(logits[i] - expected[i]));
        output.WriteLine($"hf-tiny default on {device}, {ids.Length} tokens: max |diff| {max:E3}");
        Assert.True(max <= 1e-4, $"max |diff| {max} > 1e-4");
    }

    // stories260K (head dim 8, grouped KV heads) through ILGPU's CPU accelerator against llama2.c's logits at the first
    // positions of its greedy run from BOS: a prefill of all but two, then two decode steps, in full f32.
    [SharedFact("models/stories260K/config.json", "models/stories260K/reference/llama2c_run_greedy_logits.txt")]
    public void Stories260KOnCpuAcceleratorMatchesLlama2c()
    {
        const int tokens = 10;
        string dir = SharedData.Path("models/stories260K")!;
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var rows = File.ReadLines(Path.Combine(dir, "reference", "llama2c_run_greedy_logits.txt")).Take(tokens)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToArray();
        int[] ids = rows.Select(r => int.Parse(r[1], CultureInfo.InvariantCulture)).ToArray();
        var backend = backends.Get("ilgpu-cpu", fullPrecision: true);
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, tokens, RopeMethods.FromConfig(config));
        int v = config.VocabSize, prefill = tokens - 2;
        var logits = new float[tokens * v];
        model.Forward(ids[..prefill], 0, LogitsRows.All, logits.AsSpan(0, prefill * v));
        for (int p = prefill; p < tokens; p++) model.Forward([ids[p]], p, LogitsRows.Last, logits.AsSpan(p * v, v));
        double max = 0;
        for (int p = 0; p < tokens; p++)
            for (int i = 0; i < v; i++)
                max = Math.Max(max, Math.Abs(logits[p * v + i] - float.Parse(rows[p][2 + i], CultureInfo.InvariantCulture)));
        output.WriteLine($"stories260K on ilgpu-cpu, {tokens} positions: max |logit diff| {max:E3}");
        Assert.True(max <= 1e-4, $"max |logit diff| {max} > 1e-4");
    }

    // austen (head dim 64, bf16 weights) against the CPU backend on 40 tokens: prefill through the GEMM and flash
    // attention, then decode steps. Mixed precision keeps the bf16 KV cache and bf16 tensor-core inputs; full f32 must
    // agree to f32 rounding. CUDA only: the CPU accelerator would take minutes.
    // With an index remap (window 16 of 40 positions) too: the far and near passes of flash attention and the decode
    // kernel (LLAMA_REMAP_FAST=1), or the split kernel.
    [CudaTheory]
    [InlineData("cuda", false, "none")]
    [InlineData("cuda", true, "none")]
    [InlineData("cuda", false, "selfextend:g=4,w=16")]
    [InlineData("cuda", false, "dpe:w=16,g=1,2,4,8")]
    public void AustenMatchesTheCpuBackend(string device, bool fullPrecision, string rope)
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var ids = Enumerable.Range(0, 40).Select(i => (i * 7919 + 13) % config.VocabSize).ToArray();
        float[] Logits(IBackend b)
        {
            using var w = LlamaWeights.Load(dir, config, b);
            using var m = Llama.Create(config, w, b, ids.Length, RopeMethods.Parse(rope, config, 2048), maxBatch: 32);
            int v = config.VocabSize;
            var logits = new float[ids.Length * v];
            m.Forward(ids[..36], 0, LogitsRows.All, logits.AsSpan(0, 36 * v));
            for (int p = 36; p < ids.Length; p++) m.Forward([ids[p]], p, LogitsRows.Last, logits.AsSpan(p * v, v));
            return logits;
        }
        var expected = Logits(backends.Cpu);
        var actual = Logits(backends.Get(device, fullPrecision));
        double se = 0, sr = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            se += Math.Pow(actual[i] - expected[i], 2);
            sr += (double)expected[i] * expected[i];
        }
        double bound = fullPrecision ? 1e-9 : 1e-4;
        output.WriteLine($"austen on {device}{(fullPrecision ? " full f32" : "")}, rope {rope}, 36-token prefill (chunks of 32) + 4 decode: logits NMSE {se / sr:E2}");
        Assert.True(se / sr < bound, $"NMSE {se / sr} >= {bound}");
    }
}

// Replayed decode steps (GpuBackend's decode steps) on ILGPU's CPU accelerator, which records a step's launches and
// replays them with the recorded arguments, as a CUDA graph would: decoding many tokens after a prefill must give the
// CPU backend's logits, so every position-dependent kernel follows the device step scalars (not the arguments it was
// recorded with), across the bucket boundary where the attention's grid changes, with an index remap's far branch,
// and with the f32 cache's split kernel. Also: ops that cannot be part of a replayed step are refused in one line.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~DecodeStepTests"
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public sealed class DecodeStepTests(GpuBackends backends, ITestOutputHelper output) : IClassFixture<GpuBackends>
{
    // Head dim 64 and a query group of 2 (the decode kernel's shapes on a bf16 cache), one layer, small matrices.
    private static readonly LlamaConfig Small = new()
    {
        HiddenSize = 128, IntermediateSize = 96, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 64,
        VocabSize = 48, RmsNormEps = 1e-5f, MaxPositionEmbeddings = 512, TieWordEmbeddings = false, Rope = new RopeParameters(),
    };

    // Logits of a prefill of `prefill` tokens then decode steps to `length` tokens, on backend; the last `steps` rows.
    private static float[] Decode(IBackend backend, string dir, string rope, int prefill, int length)
    {
        using var weights = LlamaWeights.Load(dir, Small, backend);
        using var model = Llama.Create(Small, weights, backend, length, RopeMethods.Parse(rope, Small, length), maxBatch: 64);
        var ids = Enumerable.Range(0, length).Select(i => (i * 31 + 7) % Small.VocabSize).ToArray();
        int v = Small.VocabSize;
        var logits = new float[(length - prefill) * v];
        model.Forward(ids[..prefill], 0, LogitsRows.None, default);
        for (int p = prefill; p < length; p++) model.Forward([ids[p]], p, LogitsRows.Last, logits.AsSpan((p - prefill) * v, v));
        return logits;
    }

    private static double Nmse(float[] expected, float[] actual)
    {
        double se = 0, sr = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            se += Math.Pow(actual[i] - expected[i], 2);
            sr += (double)expected[i] * expected[i];
        }
        return se / sr;
    }

    // Decode steps from `prefill` to `length`: the first step of a bucket runs its ops, the second is recorded and
    // replayed, later ones replay that recording. 250..265 cross the first bucket boundary (256 keys), where the
    // attention's grid changes; selfextend:g=4,w=16 decodes with the far branch; full precision takes the f32 cache's
    // split kernel. (The CPU accelerator's prefill is slow: only one case pays for 250 positions.)
    [Theory]
    [InlineData("selfextend:g=4,w=16", false, 250, 266)]
    [InlineData("none", false, 4, 16)]
    [InlineData("none", true, 4, 12)]
    public void ReplayedStepsMatchTheCpuBackend(string rope, bool fullPrecision, int prefill, int length)
    {
        using var dir = new LoaderTempDir();
        CheckpointWriter.WriteRandom(dir.Path, Small, DType.BF16, seed: 11);
        var gpu = backends.Get("ilgpu-cpu", fullPrecision);
        var expected = Decode(backends.Cpu, dir.Path, rope, prefill, length);
        long before = gpu.DecodeStepReplays;
        var actual = Decode(gpu, dir.Path, rope, prefill, length);
        long replays = gpu.DecodeStepReplays - before;
        int buckets = GpuBackend.StepBucket(length) / 256 - GpuBackend.StepBucket(prefill + 1) / 256 + 1;
        double nmse = Nmse(expected, actual), bound = fullPrecision ? 1e-9 : 1e-4;
        output.WriteLine($"rope {rope}{(fullPrecision ? ", full f32" : "")}: {length - prefill} decode steps in {buckets} bucket(s), {replays} replayed, logits NMSE {nmse:E2}");
        Assert.Equal(length - prefill - buckets, replays);   // the first step of each bucket runs its ops directly
        Assert.True(nmse < bound, $"NMSE {nmse} >= {bound}");
    }

    [Fact]
    public void OpsThatWaitOrCopyAreRefusedInsideAStep()
    {
        var gpu = backends.Get("ilgpu-cpu", false);
        using var steps = gpu.CreateDecodeSteps();
        Assert.NotNull(steps);
        using var x = gpu.Alloc(DType.F32, 1, 8);
        var e = Assert.Throws<InvalidOperationException>(() => steps.Run(3, 5, "key", () => gpu.Download(x, new float[8])));
        Assert.Contains("Download inside a decode step", e.Message);
        e = Assert.Throws<InvalidOperationException>(() => steps.Run(3, 5, "key", () => gpu.Synchronize()));
        Assert.Contains("Synchronize inside a decode step", e.Message);
        using var table = gpu.Alloc(DType.BF16, 10, 8);
        e = Assert.Throws<InvalidOperationException>(() => steps.Run(3, 5, "key", () => gpu.Embedding([4], table, x)));
        Assert.Contains("inside the decode step of token 3", e.Message);
        gpu.Synchronize();   // outside a step everything works again
    }

    [Fact]
    public void BucketsGrowWithTheLength()
    {
        Assert.Equal(256, GpuBackend.StepBucket(1));
        Assert.Equal(256, GpuBackend.StepBucket(256));
        Assert.Equal(512, GpuBackend.StepBucket(257));
        Assert.Equal(4096, GpuBackend.StepBucket(4096));
        Assert.Equal(5120, GpuBackend.StepBucket(4097));
    }
}

// Tensor parallelism on the CPU: N ranks as threads of this process (InProcessCommunicator), each loading only its
// ShardPlan's slices and running the same forward pass, against the unsharded model's logits (prefill and decode) for
// N = 1, 2, 4 on hf-tiny (4 heads, 2 KV heads: at 4 ranks each keeps the KV head its query head reads) and stories260K;
// plus the faults: sizes that do not split, a rank that fails, a rank that stops calling.
// Run: dotnet test tests/Tests.csproj --filter TensorParallelTests
using LlamaRun.Backends.Cpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public class TensorParallelTests(ITestOutputHelper output)
{
    // Logits of a 12-token prefill and 4 decoded tokens, every position.
    private static float[] Run(ILanguageModel model, int vocab)
    {
        int[] ids = [1, 5, 9, 14, 2, 7, 30, 11, 3, 8, 21, 6, 13, 4, 10, 12];
        var logits = new float[ids.Length * vocab];
        model.Forward(ids.AsSpan(0, 12), 0, LogitsRows.All, logits);
        for (int t = 12; t < ids.Length; t++) model.Forward(ids.AsSpan(t, 1), t, LogitsRows.All, logits.AsSpan(t * vocab, vocab));
        return logits;
    }

    private static float[] Unsharded(string dir, LlamaConfig config)
    {
        using var backend = new CpuBackend(DType.F32);
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, 64, RopeMethods.FromConfig(config));
        return Run(model, config.VocabSize);
    }

    private static float[][] Sharded(string dir, LlamaConfig config, int ranks)
    {
        using var comm = new InProcessCommunicator(ranks, TimeSpan.FromSeconds(30));
        return comm.RunRanks(rank =>
        {
            using var backend = new CpuBackend(DType.F32);
            using var weights = LlamaWeights.Load(dir, config, backend, shard: ShardPlan.For(config, rank, ranks));
            using var model = Llama.Create(config, weights, backend, 64, RopeMethods.FromConfig(config), shard: new TensorShard(rank, comm));
            return Run(model, config.VocabSize);
        });
    }

    private void Check(string dir, int ranks)
    {
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var expected = Unsharded(dir, config);
        var got = Sharded(dir, config, ranks);
        foreach (var rank in got) Assert.Equal(got[0], rank);   // every rank holds the same gathered logits
        double max = expected.Zip(got[0]).Max(p => Math.Abs(p.First - p.Second));
        output.WriteLine($"{Path.GetFileName(dir)} over {ranks} ranks: max |logit - unsharded| {max:E2}");
        Assert.True(max <= 1e-5, $"{ranks} ranks: max |logit - unsharded| {max:E2}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void HfTinyShardedEqualsUnsharded(int ranks) => Check(Path.Combine(LoaderTestSupport.HfTiny, "default"), ranks);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void Stories260KShardedEqualsUnsharded(int ranks)
    {
        if (SharedData.Path("models/stories260K") is not { } dir) return;
        Check(dir, ranks);
    }

    // The group that bench --tp drives: N ranks on threads of their own behind one Forward, on random weights (each rank
    // generating only its slices) against the unsharded model of the same random weights; then a group on a checkpoint.
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void TensorParallelGroupEqualsUnsharded(int ranks)
    {
        var config = LlamaConfigReader.Read(Path.Combine(LoaderTestSupport.HfTiny, "default", "config.json"));
        var rope = RopeMethods.FromConfig(config);
        float[] expected;
        using (var backend = new CpuBackend(DType.F32))
        using (var weights = LlamaWeights.Load(new RandomWeights(config, DType.BF16, 3), config, backend))
        using (var model = Llama.Create(config, weights, backend, 64, rope))
            expected = Run(model, config.VocabSize);
        var backends = Enumerable.Range(0, ranks).Select(_ => new CpuBackend(DType.F32)).ToArray();
        using var comm = new InProcessCommunicator(ranks, TimeSpan.FromSeconds(30));
        try
        {
            using var group = TensorParallelLlama.Create(config, backends, comm, _ => new RandomWeights(config, DType.BF16, 3), 64, rope);
            var got = Run(group, config.VocabSize);
            double max = expected.Zip(got).Max(p => Math.Abs(p.First - p.Second));
            output.WriteLine($"random hf-tiny shape over {ranks} ranks (one group): max |logit - unsharded| {max:E2}");
            Assert.True(max <= 1e-5, $"max |logit - unsharded| {max:E2}");
            Assert.Equal(ranks, group.Ranks.Count);
            group.Reset();
            Assert.Equal(got, Run(group, config.VocabSize));   // the group runs again from an empty cache
        }
        finally
        {
            foreach (var b in backends) b.Dispose();
        }
    }

    [Fact]
    public void AGroupOfSizesThatDoNotSplitFailsInOneLine()
    {
        var config = LlamaConfigReader.Read(Path.Combine(LoaderTestSupport.HfTiny, "default", "config.json"));
        var backends = Enumerable.Range(0, 3).Select(_ => new CpuBackend(DType.F32)).ToArray();
        using var comm = new InProcessCommunicator(3);
        var e = Assert.Throws<ArgumentException>(() =>
            TensorParallelLlama.Create(config, backends, comm, _ => new RandomWeights(config, DType.BF16, 3), 64, RopeMethods.FromConfig(config)));
        Assert.Contains("4 attention heads do not split over 3 ranks", e.Message);
        foreach (var b in backends) b.Dispose();
    }

    // GPU ranks talk through NCCL: without libnccl (this machine) or without CUDA backends, one line says why.
    [Fact]
    public void NcclIsRefusedInOneLineWhereItCannotRun()
    {
        using var g = LlamaRun.Backends.Gpu.GpuBackend.CreateCpuAccelerator();
        Assert.Null(LlamaRun.Backends.Gpu.NcclCommunicator.TryCreate([g], out string reason));
        Assert.DoesNotContain('\n', reason);
        Assert.True(reason.Contains("libnccl.so.2 not found") && reason.Contains("LLAMA_NCCL_PATH") || reason == "NCCL needs CUDA backends", reason);
    }

    [Fact]
    public void PlansSplitHeadsFfnAndVocabulary()
    {
        var config = LlamaConfigReader.Read(Path.Combine(LoaderTestSupport.HfTiny, "default", "config.json"));   // 4/2 heads, FFN 160, vocab 256
        Assert.Equal(new ShardPlan(1, 2, 2, 2, 1, 1, 80, 80, 128, 128), ShardPlan.For(config, 1, 2));
        Assert.Equal(new ShardPlan(3, 4, 3, 1, 1, 1, 120, 40, 192, 64), ShardPlan.For(config, 3, 4));
        Assert.Contains("4 attention heads do not split over 3 ranks", Assert.Throws<ArgumentException>(() => ShardPlan.For(config, 0, 3)).Message);
        Assert.Contains("3 KV heads neither split over 2 ranks", Assert.Throws<ArgumentException>(() => ShardPlan.For(config with { NumAttentionHeads = 6, NumKeyValueHeads = 3 }, 0, 2)).Message);
        Assert.Equal(1, ShardPlan.For(config with { NumAttentionHeads = 8 }, 7, 8).KvStart);   // 8 ranks over 2 KV heads: ranks 4-7 keep KV head 1
        Assert.Contains("intermediate size 162", Assert.Throws<ArgumentException>(() => ShardPlan.For(config with { IntermediateSize = 162 }, 0, 4)).Message);
    }

    [Fact]
    public void AFailedRankEndsEveryRank()
    {
        using var comm = new InProcessCommunicator(3, TimeSpan.FromSeconds(30));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.ThrowsAny<Exception>(() => comm.RunRanks(rank =>
        {
            if (rank == 1) throw new InvalidOperationException("out of memory on rank 1");
            using var b = new CpuBackend(DType.F32);
            using var x = b.Alloc(DType.F32, 1, 8);
            comm.AllReduce(rank, b, x);
            return 0;
        }));
        Assert.Contains("out of memory on rank 1", e.Message);
        Assert.True(sw.Elapsed.TotalSeconds < 10, $"took {sw.Elapsed.TotalSeconds:0.0} s");
    }

    [Fact]
    public void ARankThatStopsCallingTimesOut()
    {
        using var comm = new InProcessCommunicator(2, TimeSpan.FromSeconds(1));
        var e = Assert.ThrowsAny<Exception>(() => comm.RunRanks(rank =>
        {
            if (rank == 1) return 0;   // never joins the collective
            using var b = new CpuBackend(DType.F32);
            using var x = b.Alloc(DType.F32, 2, 4);
            comm.AllReduce(rank, b, x);
            return 0;
        }));
        Assert.Contains("all-reduce timed out after 1 s", e.Message);
    }
}

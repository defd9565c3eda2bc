// Stacked q/k/v and gate/up weights (LlamaWeights.Load fuseProjections, the GPU default): decoding through the stacked
// matrices must give exactly the logits of the separate projections. Run: dotnet test --filter FusedProjectionTests
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;

namespace LlamaRun.Tests;

public class FusedProjectionTests
{
    private static readonly string Austen = LoaderTestSupport.RepoRoot + "/models/austen";

    // A 24-token prefill, then 8 tokens decoded one at a time: every logit of both phases.
    private static float[] Run(bool fuse, DType activations)
    {
        var config = LlamaConfigReader.Read(Path.Combine(Austen, "config.json"));
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(Austen, config, backend, fuseProjections: fuse);
        Assert.Equal(fuse, weights.Layers[0].Qkv is not null);
        Assert.Equal(fuse, weights.Layers[0].GateUp is not null);
        using var model = Llama.Create(config, weights, backend, 64, RopeMethods.FromConfig(config), activations: activations);
        int[] ids = [.. Enumerable.Range(0, 32).Select(i => (i * 7919 + 5) % config.VocabSize)];
        var logits = new float[ids.Length * config.VocabSize];
        model.Forward(ids.AsSpan(0, 24), 0, LogitsRows.All, logits);
        for (int t = 24; t < ids.Length; t++)
            model.Forward(ids.AsSpan(t, 1), t, LogitsRows.All, logits.AsSpan(t * config.VocabSize, config.VocabSize));
        return logits;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DecodingThroughStackedWeightsGivesTheSameLogits(bool bf16)
    {
        var activations = bf16 ? DType.BF16 : DType.F32;
        var separate = Run(false, activations);
        var stacked = Run(true, activations);
        Assert.Equal(separate, stacked);
    }

    [Fact]
    public void ProjectionsAreRowViewsOfTheStackedMatrix()
    {
        var config = LlamaConfigReader.Read(Path.Combine(Austen, "config.json"));
        using var backend = new CpuBackend();
        using var plain = LlamaWeights.Load(Austen, config, backend, fuseProjections: false);
        using var fused = LlamaWeights.Load(Austen, config, backend, fuseProjections: true);
        Assert.Equal(plain.WeightBytes, fused.WeightBytes);
        var l = fused.Layers[1];
        Assert.Equal(config.QDim + 2 * config.KvDim, l.Qkv!.Rows);
        Assert.Equal(l.Qkv.Pointer, l.QProj.Pointer);
        Assert.Equal(l.Qkv.Pointer + (nint)((long)config.QDim * config.HiddenSize * l.Qkv.DType.Size()), l.KProj.Pointer);
        Assert.Equal(2 * config.IntermediateSize, l.GateUp!.Rows);
        Assert.Equal(l.GateUp.Pointer + (nint)((long)config.IntermediateSize * config.HiddenSize * l.GateUp.DType.Size()), l.UpProj.Pointer);
        unsafe
        {
            long bytes = l.VProj.ByteLength;
            Assert.True(new ReadOnlySpan<byte>((void*)l.VProj.Pointer, (int)bytes)
                .SequenceEqual(new ReadOnlySpan<byte>((void*)plain.Layers[1].VProj.Pointer, (int)bytes)));
        }
    }

    [Fact]
    public void ColumnViewsNeedOneRow()
    {
        using var b = new CpuBackend();
        using var one = b.Alloc(DType.F32, 1, 10);
        Assert.Equal(4, one.SliceCols(6, 4).Cols);
        Assert.Throws<ArgumentOutOfRangeException>(() => one.SliceCols(7, 4));
        using var two = b.Alloc(DType.F32, 2, 10);
        Assert.Throws<InvalidOperationException>(() => two.SliceCols(0, 5));
    }
}

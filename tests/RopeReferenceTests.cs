// RoPE tables and per-token NLL against what transformers computed for austen (reference/nll.safetensors):
// inv_freq of default, linear, YaRN and DPRoPE tables for 4x (target 2048) to 1e-6 relative, and the NLL of the
// first 1,024 held-out tokens under each. dotnet test tests/Tests.csproj --filter FullyQualifiedName~RopeReference
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public class RopeReferenceTests(ITestOutputHelper output)
{
    // Reference name -> our --rope spec for the austen model (trained at 512) extended to 2048.
    public static TheoryData<string, string> Methods() => new()
    {
        { "default", "none" },
        { "linear4", "linear:factor=4" },
        { "yarn4", "yarn:factor=4" },
        { "dprope4", "dprope" },
    };

    [Theory]
    [MemberData(nameof(Methods))]
    public void TableAndNllMatchTransformers(string name, string spec)
    {
        if (SharedData.Path("models/austen/reference/nll.safetensors") is not { } refPath) return;
        string dir = SharedData.RepoPath("models/austen")!;
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var reference = SafeTensorsFile.Open(refPath);
        var rope = RopeMethods.Parse(spec, config, 2048);

        float[] expectedInv = reference.ReadF32(name + "_inv_freq");
        var inv = rope.Base.InvFreq;
        Assert.Equal(expectedInv.Length, inv.Length);
        for (int j = 0; j < inv.Length; j++)
            Assert.True(Math.Abs(inv[j] - expectedInv[j]) <= 1e-6 * Math.Abs(expectedInv[j]), $"{name} pair {j}: {inv[j]:R} vs {expectedInv[j]:R}");

        int[] ids = reference.ReadI64("input_ids").Select(v => (int)v).ToArray();
        float[] expectedNll = reference.ReadF32(name);
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, ids.Length, rope);
        var logits = new float[ids.Length * config.VocabSize];
        model.Forward(ids, 0, LogitsRows.All, logits);
        double sum = 0;
        for (int i = 0; i < expectedNll.Length; i++)
            sum += Math.Abs(Evaluation.Nll(logits.AsSpan(i * config.VocabSize, config.VocabSize), ids[i + 1]) - expectedNll[i]);
        double mean = sum / expectedNll.Length;
        output.WriteLine($"{name} ({spec}): inv_freq equal to 1e-6, mean |NLL diff| {mean:E3} over {expectedNll.Length} tokens");
        Assert.True(mean <= 0.02, $"{name}: mean |NLL diff| {mean} > 0.02");
    }
}

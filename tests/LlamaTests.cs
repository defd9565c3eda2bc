// Whole-model oracles on the CPU: hf-tiny logits against transformers (every rope type, both config forms),
// stories260K greedy text and logits against llama2.c, austen perplexity and per-token NLL against transformers.
// dotnet test tests/Tests.csproj --filter FullyQualifiedName~LlamaTests
using System.Globalization;
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using LlamaRun.Rope;
using LlamaRun.Text;
using Xunit;
using Xunit.Abstractions;

namespace LlamaRun.Tests;

public class LlamaTests(ITestOutputHelper output)
{
    public static TheoryData<string, string> Fixtures()
    {
        var data = new TheoryData<string, string>();
        foreach (var dir in Directory.GetDirectories(LoaderTestSupport.HfTiny).Order(StringComparer.Ordinal))
            foreach (var cfg in new[] { "config.json", "config.v4.json" })
                if (File.Exists(Path.Combine(dir, cfg))) data.Add(Path.GetFileName(dir), cfg);
        return data;
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void HfTinyLogitsMatchTransformers(string variant, string configFile)
    {
        string dir = Path.Combine(LoaderTestSupport.HfTiny, variant);
        var config = LlamaConfigReader.Read(Path.Combine(dir, configFile));
        using var reference = SafeTensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        int[] ids = reference.ReadI64("input_ids").Select(v => (int)v).ToArray();
        float[] expected = reference.ReadF32("logits");

        bool bf16 = config.TorchDType == DType.BF16;
        var rope = RopeMethods.FromConfig(config);
        // The bf16 oracle is LlamaForCausalLM(...).to(torch.bfloat16), and Module.to casts RoPE's inv_freq buffer
        // too, so transformers rotated with bf16-rounded frequencies (its cos/sin are computed in f32 from them).
        if (bf16) rope = RopeSchedule.Fixed(rope.Base with { InvFreq = rope.Base.InvFreq.Select(f => DTypes.BF16ToF32(DTypes.F32ToBF16(f))).ToArray() });
        var logits = RunAll(dir, config, ids, rope, bf16 ? DType.BF16 : DType.F32);
        double max = 0, sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            double d = Math.Abs(logits[i] - expected[i]);
            max = Math.Max(max, d);
            sum += d;
        }
        double mean = sum / logits.Length;
        output.WriteLine($"{variant}/{configFile}: max |diff| {max:E3}, mean |diff| {mean:E3}");
        if (bf16) Assert.True(mean <= 2e-2, $"mean |diff| {mean} > 2e-2 (max {max})");
        else Assert.True(max <= 1e-4, $"max |diff| {max} > 1e-4");
    }

    [SharedFact("models/stories260K/config.json", "models/stories260K/reference/llama2c_run_greedy_logits.txt")]
    public void Stories260KGreedyMatchesLlama2c()
    {
        string dir = SharedData.Path("models/stories260K")!;
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var lines = File.ReadAllLines(Path.Combine(dir, "reference", "llama2c_run_greedy_logits.txt"));
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, 512, RopeMethods.FromConfig(config));
        var logits = new float[config.VocabSize];
        double max = 0;
        for (int pos = 0; pos < lines.Length; pos++)
        {
            var parts = lines[pos].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(pos, int.Parse(parts[0], CultureInfo.InvariantCulture));
            int input = int.Parse(parts[1], CultureInfo.InvariantCulture);
            model.Forward([input], pos, LogitsRows.Last, logits);
            for (int v = 0; v < config.VocabSize; v++)
                max = Math.Max(max, Math.Abs(logits[v] - float.Parse(parts[2 + v], CultureInfo.InvariantCulture)));
            if (pos + 1 < lines.Length)
                Assert.Equal(int.Parse(lines[pos + 1].AsSpan(lines[pos + 1].IndexOf(' ') + 1).ToString().Split(' ')[0], CultureInfo.InvariantCulture), CpuOps.Argmax(logits));
        }
        output.WriteLine($"stories260K: max |logit diff| over {lines.Length} positions {max:E3}");
        Assert.True(max <= 1e-4, $"max |logit diff| {max} > 1e-4");
    }

    [SharedFact("models/stories260K/config.json", "models/stories260K/reference/greedy_200_tokens.txt")]
    // llama2.c runs 200 steps from BOS and prints the token sampled at every step, the last one included: 200 tokens.
    // The bf16 KV cache (the CPU default of llama-run) gives the same text.
    public void Stories260KGreedyText()
    {
        string dir = SharedData.Path("models/stories260K")!;
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        string expected = File.ReadAllText(Path.Combine(dir, "reference", "greedy_200_tokens.txt"));
        foreach (var cache in new[] { DType.F32, DType.BF16 })
        {
            using var backend = new CpuBackend(cache);
            using var weights = LlamaWeights.Load(dir, config, backend);
            using var model = Llama.Create(config, weights, backend, 512, RopeMethods.FromConfig(config));
            var text = new System.Text.StringBuilder();
            Generator.Generate(model, Tokenizer.FromModelDirectory(dir), "", 200, SamplerOptions.Greedy, s => text.Append(s));
            Assert.Equal(expected, text + "\n");
        }
    }

    [SharedFact("models/austen/reference/heldout-ids.txt", "models/austen/reference/perplexity.json")]
    public void AustenPerplexityAt512MatchesTransformers()
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        int[] ids = File.ReadAllText(SharedData.Path("models/austen/reference/heldout-ids.txt")!)
            .Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, 512, RopeMethods.FromConfig(config));
        double ppl = Evaluation.Perplexity(model, ids, 512, 16).Ppl;
        output.WriteLine($"austen ppl@512 = {ppl:F4} (transformers bf16: 45.4047)");
        Assert.InRange(ppl, 45.4047 * 0.985, 45.4047 * 1.015);
    }

    [SharedFact("models/austen/reference/nll.safetensors")]
    public void AustenPerTokenNllMatchesTransformers()
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        using var reference = SafeTensorsFile.Open(SharedData.Path("models/austen/reference/nll.safetensors")!);
        output.WriteLine(string.Join(", ", reference.Tensors.Keys.Order()));
        int[] ids = reference.ReadI64("input_ids").Select(v => (int)v).ToArray();
        float[] expected = reference.ReadF32("default");
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var logits = RunAll(dir, config, ids, RopeMethods.FromConfig(config));
        double sum = 0;
        for (int i = 0; i < expected.Length; i++)
            sum += Math.Abs(Evaluation.Nll(logits.AsSpan(i * config.VocabSize, config.VocabSize), ids[i + 1]) - expected[i]);
        double mean = sum / expected.Length;
        output.WriteLine($"austen default: mean |NLL diff| {mean:E3} over {expected.Length} tokens");
        Assert.True(mean <= 0.02, $"mean |NLL diff| {mean} > 0.02");
    }

    private static float[] RunAll(string dir, LlamaConfig config, int[] ids, RopeSchedule rope, DType activations = DType.F32)
    {
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, ids.Length, rope, activations: activations);
        var logits = new float[ids.Length * config.VocabSize];
        model.Forward(ids, 0, LogitsRows.All, logits);
        return logits;
    }
}

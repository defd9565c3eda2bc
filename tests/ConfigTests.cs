// config.json reader: every fixture in both transformers forms gives the same record; unsupported or malformed configs fail by name.
// Run: dotnet test tests/Tests.csproj --filter ConfigTests
using LlamaRun.Core;
using LlamaRun.Model;
using Xunit;
using static LlamaRun.Tests.LoaderTestSupport;

namespace LlamaRun.Tests;

public class ConfigTests
{
    internal static void AssertSameConfig(LlamaConfig a, LlamaConfig b)
    {
        Assert.Equal(a.HiddenSize, b.HiddenSize);
        Assert.Equal(a.IntermediateSize, b.IntermediateSize);
        Assert.Equal(a.NumHiddenLayers, b.NumHiddenLayers);
        Assert.Equal(a.NumAttentionHeads, b.NumAttentionHeads);
        Assert.Equal(a.NumKeyValueHeads, b.NumKeyValueHeads);
        Assert.Equal(a.HeadDim, b.HeadDim);
        Assert.Equal(a.VocabSize, b.VocabSize);
        Assert.Equal(a.RmsNormEps, b.RmsNormEps);
        Assert.Equal(a.MaxPositionEmbeddings, b.MaxPositionEmbeddings);
        Assert.Equal(a.TieWordEmbeddings, b.TieWordEmbeddings);
        Assert.Equal(a.BosTokenIds, b.BosTokenIds);
        Assert.Equal(a.EosTokenIds, b.EosTokenIds);
        Assert.Equal(a.TorchDType, b.TorchDType);
        var (r, s) = (a.Rope, b.Rope);
        Assert.Equal(r.Type, s.Type);
        Assert.Equal(r.Theta, s.Theta);
        Assert.Equal(r.PartialRotaryFactor, s.PartialRotaryFactor);
        Assert.Equal(r.Factor, s.Factor);
        Assert.Equal(r.OriginalMaxPositionEmbeddings, s.OriginalMaxPositionEmbeddings);
        Assert.Equal(r.AttentionFactor, s.AttentionFactor);
        Assert.Equal(r.BetaFast, s.BetaFast);
        Assert.Equal(r.BetaSlow, s.BetaSlow);
        Assert.Equal(r.Mscale, s.Mscale);
        Assert.Equal(r.MscaleAllDim, s.MscaleAllDim);
        Assert.Equal(r.Truncate, s.Truncate);
        Assert.Equal(r.LowFreqFactor, s.LowFreqFactor);
        Assert.Equal(r.HighFreqFactor, s.HighFreqFactor);
        Assert.Equal(r.ShortFactor, s.ShortFactor);
        Assert.Equal(r.LongFactor, s.LongFactor);
    }

    [Fact]
    public void HfTinyConfigsAgreeInBothForms()
    {
        var expectedType = new Dictionary<string, RopeType>
        {
            ["default"] = RopeType.Default, ["default-bf16"] = RopeType.Default, ["linear"] = RopeType.Linear,
            ["dynamic"] = RopeType.Dynamic, ["yarn"] = RopeType.Yarn, ["yarn-b"] = RopeType.Yarn,
            ["llama3"] = RopeType.Llama3, ["longrope"] = RopeType.LongRope,
        };
        int checkedV4 = 0;
        foreach (var v in HfTinyVariants)
        {
            var c = LlamaConfigReader.Read(Path.Combine(HfTiny, v, "config.json"));
            Assert.Equal((64, 160, 2, 4, 2, 16, 256, 64), (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers,
                c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings));
            Assert.Equal(1e-5f, c.RmsNormEps);
            Assert.False(c.TieWordEmbeddings);
            Assert.Equal([1], c.BosTokenIds);
            Assert.Equal([2], c.EosTokenIds);
            Assert.Equal(10000.0, c.Rope.Theta);
            Assert.Equal(1.0, c.Rope.PartialRotaryFactor);
            Assert.Equal(expectedType[v], c.Rope.Type);
            Assert.Equal(v == "default-bf16" ? DType.BF16 : DType.F32, c.TorchDType);
            string v4 = Path.Combine(HfTiny, v, "config.v4.json");
            if (File.Exists(v4))
            {
                AssertSameConfig(c, LlamaConfigReader.Read(v4));
                checkedV4++;
            }
        }
        Assert.Equal(7, checkedV4);

        var yb = LlamaConfigReader.Read(Path.Combine(HfTiny, "yarn-b"));
        Assert.Equal((8.0, 64, 16.0, 2.0), (yb.Rope.Factor, yb.Rope.OriginalMaxPositionEmbeddings, yb.Rope.BetaFast, yb.Rope.BetaSlow));
        Assert.Null(yb.Rope.AttentionFactor);
        var l3 = LlamaConfigReader.Read(Path.Combine(HfTiny, "llama3", "config.json"));
        Assert.Equal((4.0, 1.0, 4.0, 64), (l3.Rope.Factor, l3.Rope.LowFreqFactor, l3.Rope.HighFreqFactor, l3.Rope.OriginalMaxPositionEmbeddings));
        var lr = LlamaConfigReader.Read(Path.Combine(HfTiny, "longrope", "config.json"));
        Assert.Equal([1.0f, 1.1f, 1.2f, 1.3f, 1.4f, 1.5f, 1.6f, 1.7f], lr.Rope.ShortFactor!);
        Assert.Equal([1.0f, 1.5f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 4.5f], lr.Rope.LongFactor!);
        Assert.Null(lr.Rope.Factor);
        var lin = LlamaConfigReader.Read(Path.Combine(HfTiny, "linear", "config.json"));
        Assert.Equal(4.0, lin.Rope.Factor);
    }

    [Fact]
    public void WrittenConfigsReadBackEqual()
    {
        using var dir = new LoaderTempDir();
        string path = dir.File("config.json");
        foreach (var v in HfTinyVariants)
        {
            var c = LlamaConfigReader.Read(Path.Combine(HfTiny, v, "config.json"));
            CheckpointWriter.WriteConfig(path, c);
            AssertSameConfig(c, LlamaConfigReader.Read(path));
        }
        var odd = Good(",\"head_dim\":32,\"num_key_value_heads\":1,\"eos_token_id\":[5,6],\"rms_norm_eps\":1.1e-7,\"tie_word_embeddings\":true," +
                       "\"partial_rotary_factor\":0.25,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":3.3,\"mscale\":0.7,\"truncate\":false}");
        CheckpointWriter.WriteConfig(path, odd);
        AssertSameConfig(odd, LlamaConfigReader.Read(path));
    }

    [Fact]
    public void AustenAndStories260K()
    {
        var austen = LlamaConfigReader.Read(Path.Combine(RepoRoot, "models", "austen", "config.json"));
        Assert.Equal((256, 768, 6, 4, 2, 64, 4096, 512), (austen.HiddenSize, austen.IntermediateSize, austen.NumHiddenLayers,
            austen.NumAttentionHeads, austen.NumKeyValueHeads, austen.HeadDim, austen.VocabSize, austen.MaxPositionEmbeddings));
        Assert.Equal(DType.BF16, austen.TorchDType);
        Assert.Equal(RopeType.Default, austen.Rope.Type);

        if (SharedPath("models/stories260K/config.json") is not { } stories) return;
        var s = LlamaConfigReader.Read(stories);
        Assert.Equal((64, 172, 5, 8, 4, 8, 512, 512), (s.HiddenSize, s.IntermediateSize, s.NumHiddenLayers,
            s.NumAttentionHeads, s.NumKeyValueHeads, s.HeadDim, s.VocabSize, s.MaxPositionEmbeddings));
        Assert.True(s.TieWordEmbeddings);
        Assert.Equal(DType.F32, s.TorchDType);
        Assert.Equal(10000.0, s.Rope.Theta);
        Assert.Equal(RopeType.Default, s.Rope.Type);
    }

    private const string Base =
        "\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":160,\"num_hidden_layers\":2," +
        "\"num_attention_heads\":4,\"vocab_size\":256,\"max_position_embeddings\":64";

    private static LlamaConfig Good(string extra) =>
        LlamaConfigReader.Parse("config.json", System.Text.Encoding.UTF8.GetBytes("{" + Base + extra + "}"));

    private static void Bad(string json, params string[] fragments)
    {
        using var dir = new LoaderTempDir();
        string path = dir.Write("config.json", json);
        AssertModelError(() => LlamaConfigReader.Read(path), path, fragments);
    }

    private static void BadExtra(string extra, params string[] fragments) => Bad("{" + Base + extra + "}", fragments);

    [Fact]
    public void DefaultsFollowTransformers()
    {
        var c = Good("");
        Assert.Equal(4, c.NumKeyValueHeads);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(1e-6f, c.RmsNormEps);
        Assert.False(c.TieWordEmbeddings);
        Assert.Empty(c.BosTokenIds);
        Assert.Equal(RopeType.Default, c.Rope.Type);
        Assert.Equal(10000.0, c.Rope.Theta);
        Assert.Equal(DType.F32, c.TorchDType);

        var d = Good(",\"head_dim\":32,\"num_key_value_heads\":1,\"eos_token_id\":[128001,128009],\"bos_token_id\":null," +
                     "\"torch_dtype\":\"float16\",\"rope_theta\":500000.0,\"partial_rotary_factor\":0.5," +
                     "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"mscale\":0.707,\"mscale_all_dim\":1,\"truncate\":false,\"attention_factor\":1.2}");
        Assert.Equal((32, 1, 128), (d.HeadDim, d.NumKeyValueHeads, d.QDim));
        Assert.Equal(16, d.RotaryDim);
        Assert.Equal([128001, 128009], d.EosTokenIds);
        Assert.Empty(d.BosTokenIds);
        Assert.Equal(DType.F16, d.TorchDType);
        Assert.Equal((RopeType.Yarn, 500000.0, 4.0, 0.707, 1.0, false, 1.2),
            (d.Rope.Type, d.Rope.Theta, d.Rope.Factor, d.Rope.Mscale, d.Rope.MscaleAllDim, d.Rope.Truncate, d.Rope.AttentionFactor));

        var archOnly = LlamaConfigReader.Parse("c", System.Text.Encoding.UTF8.GetBytes(
            "{" + Base.Replace("\"model_type\":\"llama\"", "\"architectures\":[\"LlamaForCausalLM\"]") + "}"));
        Assert.Equal(64, archOnly.HiddenSize);
    }

    [Fact]
    public void MissingKeysAndWrongTypes()
    {
        Bad("{" + Base.Replace("\"hidden_size\":64,", "") + "}", "hidden_size: missing, expected a positive integer");
        Bad("{" + Base.Replace("\"vocab_size\":256", "\"vocab_size\":null") + "}", "vocab_size: missing");
        BadExtra(",\"hidden_size\":\"64\"", "hidden_size: listed twice");
        Bad("{" + Base.Replace("\"hidden_size\":64", "\"hidden_size\":\"64\"") + "}", "hidden_size: expected a positive integer, got string \"64\"");
        Bad("{" + Base.Replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":2.5") + "}", "num_hidden_layers: expected a positive integer, got 2.5");
        Bad("{" + Base.Replace("\"intermediate_size\":160", "\"intermediate_size\":0") + "}", "intermediate_size: expected a positive integer, got 0");
        Bad("{" + Base.Replace("\"intermediate_size\":160", "\"intermediate_size\":-3") + "}", "intermediate_size: expected a positive integer, got -3");
        Bad("{" + Base.Replace("\"vocab_size\":256", "\"vocab_size\":99999999999") + "}", "vocab_size: expected a positive integer");
        BadExtra(",\"rms_norm_eps\":\"small\"", "rms_norm_eps: expected a finite number, got string \"small\"");
        BadExtra(",\"rms_norm_eps\":0", "rms_norm_eps: expected a positive number, got 0");
        BadExtra(",\"tie_word_embeddings\":1", "tie_word_embeddings: expected true or false, got 1");
        BadExtra(",\"eos_token_id\":\"</s>\"", "eos_token_id: expected a token id, a list of token ids or null");
        BadExtra(",\"eos_token_id\":[1,-2]", "eos_token_id: expected a list of non-negative token ids, got -2");
        BadExtra(",\"rope_scaling\":[4]", "rope_scaling: expected an object, got an array");
        BadExtra(",\"rope_parameters\":{\"rope_theta\":\"1e4\"}", "rope_parameters.rope_theta: expected a finite number");
        BadExtra(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":-2}", "rope_scaling.factor: expected a positive number, got -2");
        BadExtra(",\"torch_dtype\":\"int8\"", "torch_dtype: \"int8\" is not supported");
        Bad("{\"hidden_size\":64", "not valid JSON");
        Bad("[1]", "expected a JSON object, got Array");
        Bad("", "not valid JSON");
        using var dir = new LoaderTempDir();
        AssertModelError(() => LlamaConfigReader.Read(dir.File("config.json")), dir.File("config.json"), "cannot read");
    }

    [Fact]
    public void UnsupportedArchitecturesAreRefusedByName()
    {
        Bad("{" + Base.Replace("\"llama\"", "\"mistral\"") + "}", "model_type: \"mistral\" is not supported, expected \"llama\"");
        Bad("{" + Base.Replace("\"model_type\":\"llama\"", "\"architectures\":[\"MistralForCausalLM\"]") + "}",
            "architectures: [\"MistralForCausalLM\"] is not supported, expected LlamaForCausalLM");
        Bad("{" + Base.Replace("\"model_type\":\"llama\",", "") + "}", "model_type: missing");
        BadExtra(",\"sliding_window\":4096", "sliding_window: sliding-window attention (Mistral-style) is not supported");
        BadExtra(",\"attention_bias\":true", "attention_bias: true is not supported");
        BadExtra(",\"mlp_bias\":true", "mlp_bias: true is not supported");
        BadExtra(",\"hidden_act\":\"gelu\"", "hidden_act: \"gelu\" is not supported, expected \"silu\"");
        BadExtra(",\"rope_scaling\":{\"rope_type\":\"ntk-by-parts\",\"factor\":2}", "rope_scaling.rope_type: \"ntk-by-parts\" is not supported, expected one of default, linear");
        BadExtra(",\"rope_parameters\":{\"rope_type\":\"su\"}", "rope_parameters.rope_type: \"su\" is not supported");
        BadExtra(",\"num_key_value_heads\":3", "num_key_value_heads: 3 does not divide num_attention_heads 4");
        Bad("{" + Base.Replace("\"num_attention_heads\":4", "\"num_attention_heads\":5") + "}", "hidden_size: 64 is not divisible by num_attention_heads 5");
        BadExtra(",\"partial_rotary_factor\":0.3", "partial_rotary_factor: 0.3 times head_dim 16 must give an even rotary dimension");
        BadExtra(",\"rope_scaling\":{\"rope_type\":\"linear\"}", "rope_scaling.factor: missing: rope_type \"linear\" needs it");
        BadExtra(",\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4}",
            "rope_parameters.original_max_position_embeddings: missing: rope_type \"llama3\" needs it");
        BadExtra(",\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":1,\"original_max_position_embeddings\":8192}",
            "rope_parameters.high_freq_factor: 1 must exceed low_freq_factor 4");
        BadExtra(",\"rope_parameters\":{\"rope_type\":\"longrope\",\"short_factor\":[1,1],\"long_factor\":[1,1,1,1,1,1,1,1]}",
            "rope_parameters.short_factor: expected 8 values (rotary dim / 2), got 2");
        BadExtra(",\"rope_parameters\":{\"rope_type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,\"x\"],\"long_factor\":[1,1,1,1,1,1,1,1]}",
            "rope_parameters.short_factor[7]: expected a finite number, got string \"x\"");
    }
}

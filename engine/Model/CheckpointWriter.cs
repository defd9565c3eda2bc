// Writes a complete random Llama checkpoint (config.json in transformers 5.x form + model.safetensors with HF names) for
// benchmarks and tests; tensors are generated while streaming, so stories110M-sized or larger models need little memory.
using System.Globalization;
using System.Text.Json;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>Writes Llama checkpoints that LlamaConfigReader and LlamaWeights read back.</summary>
public static class CheckpointWriter
{
    /// <summary>Writes dir/config.json and dir/model.safetensors with seeded uniform weights (matrices scaled by 1/sqrt(in), norms near 1).</summary>
    public static void WriteRandom(string dir, LlamaConfig config, DType dtype, int seed)
    {
        Directory.CreateDirectory(dir);
        WriteConfig(Path.Combine(dir, "config.json"), config);
        SafeTensorsWriter.Write(Path.Combine(dir, Checkpoint.SingleFileName), RandomEntries(config, dtype, seed),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>The tensors of a random checkpoint for config, in HF names; each is generated when written.</summary>
    public static IEnumerable<SafeTensorsEntry> RandomEntries(LlamaConfig config, DType dtype, int seed)
    {
        int next = seed;
        foreach (var (name, shape, norm) in Tensors(config))
        {
            if (norm)
            {
                var rng = new Random(next++);
                yield return SafeTensorsEntry.FromFloats(name, dtype, shape, Enumerable.Range(0, (int)shape[0]).Select(_ => 1f + 0.1f * (rng.NextSingle() - 0.5f)).ToArray());
            }
            else
            {
                yield return SafeTensorsEntry.Random(name, dtype, shape, next++, 1f / MathF.Sqrt(shape[1]));
            }
        }
    }

    /// <summary>Every tensor a checkpoint of config holds, in file order: HF name, shape, and whether it is a norm weight.</summary>
    public static IEnumerable<(string Name, long[] Shape, bool Norm)> Tensors(LlamaConfig config)
    {
        int h = config.HiddenSize, ff = config.IntermediateSize, q = config.QDim, kv = config.KvDim;
        yield return ("model.embed_tokens.weight", [config.VocabSize, h], false);
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", [h], true);
            yield return (p + "self_attn.q_proj.weight", [q, h], false);
            yield return (p + "self_attn.k_proj.weight", [kv, h], false);
            yield return (p + "self_attn.v_proj.weight", [kv, h], false);
            yield return (p + "self_attn.o_proj.weight", [h, q], false);
            yield return (p + "post_attention_layernorm.weight", [h], true);
            yield return (p + "mlp.gate_proj.weight", [ff, h], false);
            yield return (p + "mlp.up_proj.weight", [ff, h], false);
            yield return (p + "mlp.down_proj.weight", [h, ff], false);
        }
        yield return ("model.norm.weight", [h], true);
        if (!config.TieWordEmbeddings) yield return ("lm_head.weight", [config.VocabSize, h], false);
    }

    /// <summary>Writes config as a transformers 5.x config.json (rope_parameters) that LlamaConfigReader reads back to an equal record.</summary>
    public static void WriteConfig(string path, LlamaConfig config)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        using var w = new Utf8JsonWriter(file, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartArray("architectures");
        w.WriteStringValue("LlamaForCausalLM");
        w.WriteEndArray();
        w.WriteString("model_type", "llama");
        w.WriteString("hidden_act", "silu");
        w.WriteNumber("hidden_size", config.HiddenSize);
        w.WriteNumber("intermediate_size", config.IntermediateSize);
        w.WriteNumber("num_hidden_layers", config.NumHiddenLayers);
        w.WriteNumber("num_attention_heads", config.NumAttentionHeads);
        w.WriteNumber("num_key_value_heads", config.NumKeyValueHeads);
        w.WriteNumber("head_dim", config.HeadDim);
        w.WriteNumber("vocab_size", config.VocabSize);
        w.WriteNumber("max_position_embeddings", config.MaxPositionEmbeddings);
        // The shortest text that round-trips the float, so the reader's (float)double gives the same eps.
        w.WritePropertyName("rms_norm_eps");
        w.WriteRawValue(config.RmsNormEps.ToString("R", CultureInfo.InvariantCulture));
        w.WriteBoolean("tie_word_embeddings", config.TieWordEmbeddings);
        WriteIds(w, "bos_token_id", config.BosTokenIds);
        WriteIds(w, "eos_token_id", config.EosTokenIds);
        w.WriteString("dtype", config.TorchDType switch { DType.F16 => "float16", DType.BF16 => "bfloat16", _ => "float32" });
        WriteRope(w, config.Rope);
        w.WriteEndObject();
    }

    private static void WriteIds(Utf8JsonWriter w, string key, int[] ids)
    {
        if (ids.Length == 0) { w.WriteNull(key); return; }
        if (ids.Length == 1) { w.WriteNumber(key, ids[0]); return; }
        w.WriteStartArray(key);
        foreach (int id in ids) w.WriteNumberValue(id);
        w.WriteEndArray();
    }

    private static void WriteRope(Utf8JsonWriter w, RopeParameters r)
    {
        w.WriteStartObject("rope_parameters");
        w.WriteString("rope_type", r.Type switch
        {
            RopeType.Linear => "linear", RopeType.Dynamic => "dynamic", RopeType.Yarn => "yarn",
            RopeType.Llama3 => "llama3", RopeType.LongRope => "longrope", _ => "default",
        });
        w.WriteNumber("rope_theta", r.Theta);
        if (r.PartialRotaryFactor != 1.0) w.WriteNumber("partial_rotary_factor", r.PartialRotaryFactor);
        void Num(string key, double? v) { if (v is { } x) w.WriteNumber(key, x); }
        Num("factor", r.Factor);
        if (r.OriginalMaxPositionEmbeddings is { } o) w.WriteNumber("original_max_position_embeddings", o);
        Num("attention_factor", r.AttentionFactor);
        Num("beta_fast", r.BetaFast);
        Num("beta_slow", r.BetaSlow);
        Num("mscale", r.Mscale);
        Num("mscale_all_dim", r.MscaleAllDim);
        if (r.Truncate is { } t) w.WriteBoolean("truncate", t);
        Num("low_freq_factor", r.LowFreqFactor);
        Num("high_freq_factor", r.HighFreqFactor);
        foreach (var (key, values) in new[] { ("short_factor", r.ShortFactor), ("long_factor", r.LongFactor) })
        {
            if (values is null) continue;
            w.WriteStartArray(key);
            foreach (float f in values) w.WriteRawValue(f.ToString("R", CultureInfo.InvariantCulture));
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }
}

// Reads a Hugging Face Llama config.json (transformers 4.x rope_theta + rope_scaling, or 5.x rope_parameters) into LlamaConfig.
// Unsupported variants are refused by name; defaults follow transformers' LlamaConfig. Exercise: dotnet test --filter ConfigTests
using System.Text.Json;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>Parses and validates config.json into a LlamaConfig.</summary>
public static class LlamaConfigReader
{
    private static readonly Dictionary<string, RopeType> RopeTypes = new(StringComparer.Ordinal)
    {
        ["default"] = RopeType.Default, ["linear"] = RopeType.Linear, ["dynamic"] = RopeType.Dynamic,
        ["yarn"] = RopeType.Yarn, ["llama3"] = RopeType.Llama3, ["longrope"] = RopeType.LongRope,
    };

    /// <summary>Reads config.json at configPath (or inside the directory configPath), or throws ModelFormatException naming the file and key.</summary>
    public static LlamaConfig Read(string configPath)
    {
        if (Directory.Exists(configPath)) configPath = Path.Combine(configPath, "config.json");
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(configPath);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw ModelFormatException.In(configPath, $"cannot read: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
        }
        return Parse(configPath, bytes);
    }

    /// <summary>Parses config.json bytes; path is used only in messages.</summary>
    public static LlamaConfig Parse(string path, ReadOnlySpan<byte> json)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 32, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException ex)
        {
            throw ModelFormatException.In(path, $"not valid JSON: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw ModelFormatException.In(path, $"expected a JSON object, got {doc.RootElement.ValueKind}");
            try
            {
                return FromJson(new Keys(path, doc.RootElement, ""));
            }
            catch (InvalidOperationException ex)
            {
                throw ModelFormatException.In(path, $"unreadable string value: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
            }
        }
    }

    private static LlamaConfig FromJson(Keys k)
    {
        CheckArchitecture(k);
        if (k.Bool("attention_bias") == true) throw k.Error("attention_bias", "true is not supported (Llama has no attention biases)");
        if (k.Bool("mlp_bias") == true) throw k.Error("mlp_bias", "true is not supported (Llama has no MLP biases)");
        string act = k.String("hidden_act") ?? "silu";
        if (act is not ("silu" or "swish")) throw k.Error("hidden_act", $"{SafeTensorsHeader.Quote(act)} is not supported, expected \"silu\"");
        if (k.Has("sliding_window"))
            throw k.Error("sliding_window", "sliding-window attention (Mistral-style) is not supported");

        int hidden = k.RequiredPositiveInt("hidden_size");
        int intermediate = k.RequiredPositiveInt("intermediate_size");
        int layers = k.RequiredPositiveInt("num_hidden_layers");
        int heads = k.RequiredPositiveInt("num_attention_heads");
        int kvHeads = k.PositiveInt("num_key_value_heads") ?? heads;
        int vocab = k.RequiredPositiveInt("vocab_size");
        int maxPos = k.RequiredPositiveInt("max_position_embeddings");
        if (heads % kvHeads != 0)
            throw k.Error("num_key_value_heads", $"{kvHeads} does not divide num_attention_heads {heads}");
        int? explicitHeadDim = k.PositiveInt("head_dim");
        if (explicitHeadDim is null && hidden % heads != 0)
            throw k.Error("hidden_size", $"{hidden} is not divisible by num_attention_heads {heads} and head_dim is not given");
        int headDim = explicitHeadDim ?? hidden / heads;
        if ((long)heads * headDim > int.MaxValue)
            throw k.Error("head_dim", $"num_attention_heads {heads} x head_dim {headDim} is too large");
        double eps = k.Double("rms_norm_eps") ?? 1e-6;
        if (!(eps > 0)) throw k.Error("rms_norm_eps", $"expected a positive number, got {eps}");

        var rope = ReadRope(k, headDim);
        return new LlamaConfig
        {
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            VocabSize = vocab,
            RmsNormEps = (float)eps,
            MaxPositionEmbeddings = maxPos,
            TieWordEmbeddings = k.Bool("tie_word_embeddings") ?? false,
            Rope = rope,
            BosTokenIds = k.TokenIds("bos_token_id"),
            EosTokenIds = k.TokenIds("eos_token_id"),
            TorchDType = ReadDType(k),
        };
    }

    private static void CheckArchitecture(Keys k)
    {
        string? modelType = k.String("model_type");
        string[]? archs = k.Strings("architectures");
        if (modelType is not null && modelType != "llama")
            throw k.Error("model_type", $"{SafeTensorsHeader.Quote(modelType)} is not supported, expected \"llama\"");
        if (archs is { Length: > 0 } && !archs.Any(a => a.Equals("LlamaForCausalLM", StringComparison.OrdinalIgnoreCase)))
            throw k.Error("architectures", $"[{string.Join(", ", archs.Select(SafeTensorsHeader.Quote))}] is not supported, expected LlamaForCausalLM");
        if (modelType is null && archs is not { Length: > 0 })
            throw k.Error("model_type", "missing: expected model_type \"llama\" or architectures [\"LlamaForCausalLM\"]");
    }

    private static DType ReadDType(Keys k)
    {
        string key = k.Has("dtype") ? "dtype" : "torch_dtype";
        return k.String(key) switch
        {
            null or "float32" => DType.F32,
            "float16" => DType.F16,
            "bfloat16" => DType.BF16,
            var s => throw k.Error(key, $"{SafeTensorsHeader.Quote(s)} is not supported, expected float32, float16 or bfloat16"),
        };
    }

    private static RopeParameters ReadRope(Keys top, int headDim)
    {
        // 5.x: everything in rope_parameters. 4.x: rope_theta at top level, scaling keys in rope_scaling (type or rope_type).
        Keys? p = top.Object("rope_parameters") ?? top.Object("rope_scaling");
        double theta = p?.Double("rope_theta") ?? top.Double("rope_theta") ?? 10000.0;
        if (!(theta > 0)) throw (p ?? top).Error("rope_theta", $"expected a positive number, got {theta}");
        var partialSource = p is not null && p.Has("partial_rotary_factor") ? p : top;
        double partial = partialSource.Double("partial_rotary_factor") ?? 1.0;
        double rotary = headDim * partial;
        if (!(partial > 0 && partial <= 1) || rotary != Math.Floor(rotary) || (int)rotary % 2 != 0)
            throw partialSource.Error("partial_rotary_factor", $"{partial} times head_dim {headDim} must give an even rotary dimension in (0, head_dim]");
        if (p is null) return new RopeParameters { Theta = theta, PartialRotaryFactor = partial };

        string typeKey = p.Has("rope_type") ? "rope_type" : "type";
        string typeName = p.String(typeKey) ?? "default";
        if (!RopeTypes.TryGetValue(typeName, out var type))
            throw p.Error(typeKey, $"{SafeTensorsHeader.Quote(typeName)} is not supported, expected one of {string.Join(", ", RopeTypes.Keys)}");
        var r = new RopeParameters
        {
            Type = type,
            Theta = theta,
            PartialRotaryFactor = partial,
            Factor = p.PositiveDouble("factor"),
            OriginalMaxPositionEmbeddings = p.PositiveInt("original_max_position_embeddings"),
            AttentionFactor = p.PositiveDouble("attention_factor"),
            BetaFast = p.PositiveDouble("beta_fast"),
            BetaSlow = p.PositiveDouble("beta_slow"),
            Mscale = p.Double("mscale"),
            MscaleAllDim = p.Double("mscale_all_dim"),
            Truncate = p.Bool("truncate"),
            LowFreqFactor = p.PositiveDouble("low_freq_factor"),
            HighFreqFactor = p.PositiveDouble("high_freq_factor"),
            ShortFactor = p.Floats("short_factor"),
            LongFactor = p.Floats("long_factor"),
        };
        string[] needed = type switch
        {
            RopeType.Linear or RopeType.Dynamic or RopeType.Yarn => ["factor"],
            RopeType.Llama3 => ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
            RopeType.LongRope => ["short_factor", "long_factor"],
            _ => [],
        };
        foreach (var key in needed)
            if (!p.Has(key)) throw p.Error(key, $"missing: rope_type \"{typeName}\" needs it");
        if (type == RopeType.Llama3 && r.HighFreqFactor <= r.LowFreqFactor)
            throw p.Error("high_freq_factor", $"{r.HighFreqFactor} must exceed low_freq_factor {r.LowFreqFactor}");
        if (type == RopeType.Yarn && r.BetaFast is { } bf && r.BetaSlow is { } bs && bf < bs)
            throw p.Error("beta_fast", $"{bf} must not be below beta_slow {bs}");
        int half = (int)rotary / 2;
        foreach (var (key, arr) in new[] { ("short_factor", r.ShortFactor), ("long_factor", r.LongFactor) })
            if (type == RopeType.LongRope && arr!.Length != half)
                throw p.Error(key, $"expected {half} values (rotary dim / 2), got {arr.Length}");
        return r;
    }

    // Typed, validated access to the keys of one JSON object of a config file; null values count as absent.
    private sealed class Keys(string path, JsonElement obj, string prefix)
    {
        public bool Has(string key) => Get(key) is not null;

        public ModelFormatException Error(string key, string problem) => ModelFormatException.In(path, $"{prefix}{key}: {problem}");

        public Keys? Object(string key) => Get(key) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Object } v => new Keys(path, v, prefix + key + "."),
            var v => throw Wrong(key, "an object", v),
        };

        public bool? Bool(string key) => Get(key) switch
        {
            null => null,
            { ValueKind: JsonValueKind.True } => true,
            { ValueKind: JsonValueKind.False } => false,
            var v => throw Wrong(key, "true or false", v),
        };

        public string? String(string key) => Get(key) switch
        {
            null => null,
            { ValueKind: JsonValueKind.String } v => v.GetString(),
            var v => throw Wrong(key, "a string", v),
        };

        public string[]? Strings(string key) => Get(key) switch
        {
            null => null,
            { ValueKind: JsonValueKind.String } v => [v.GetString()!],
            { ValueKind: JsonValueKind.Array } v => v.EnumerateArray()
                .Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Wrong(key, "an array of strings", v)).ToArray(),
            var v => throw Wrong(key, "an array of strings", v),
        };

        public int? PositiveInt(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x) || x <= 0)
                throw Wrong(key, "a positive integer", v);
            return x;
        }

        public int RequiredPositiveInt(string key) => PositiveInt(key) ?? throw Error(key, "missing, expected a positive integer");

        public double? Double(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !double.IsFinite(x))
                throw Wrong(key, "a finite number", v);
            return x;
        }

        public double? PositiveDouble(string key) =>
            Double(key) is { } x ? (x > 0 ? x : throw Error(key, $"expected a positive number, got {x}")) : null;

        public float[]? Floats(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Array) throw Wrong(key, "an array of numbers", v);
            var result = new float[v.GetArrayLength()];
            int i = 0;
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double x) || !float.IsFinite((float)x))
                    throw Wrong($"{key}[{i}]", "a finite number", e);
                result[i++] = (float)x;
            }
            return result;
        }

        public int[] TokenIds(string key)
        {
            if (Get(key) is not { } v) return [];
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int one) && one >= 0) return [one];
            if (v.ValueKind != JsonValueKind.Array) throw Wrong(key, "a token id, a list of token ids or null", v);
            return v.EnumerateArray()
                .Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0
                    ? id : throw Wrong(key, "a list of non-negative token ids", e)).ToArray();
        }

        private JsonElement? Get(string key)
        {
            JsonElement? found = null;
            foreach (var p in obj.EnumerateObject())
            {
                if (p.Name != key) continue;
                if (found is not null) throw Error(key, "listed twice");
                found = p.Value;
            }
            return found is { ValueKind: JsonValueKind.Null } ? null : found;
        }

        private ModelFormatException Wrong(string key, string expected, JsonElement? value)
        {
            var got = value!.Value;
            string text = got.ValueKind switch
            {
                JsonValueKind.String => "string " + SafeTensorsHeader.Quote(got.GetString()!),
                JsonValueKind.Object => "an object",
                JsonValueKind.Array => "an array",
                _ => SafeTensorsHeader.OneLine(got.GetRawText()),
            };
            return Error(key, $"expected {expected}, got {text}");
        }
    }
}

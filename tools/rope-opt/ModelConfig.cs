// Adapter from `-m DIR` (or explicit flags) to the LlamaConfig that RopeMethods needs. It reads only the RoPE-relevant
// keys of config.json (head_dim or hidden_size/num_attention_heads, rope_theta in rope_parameters or at top level,
// max_position_embeddings, partial_rotary_factor). ADAPTER: replace ReadRopeKeys with LlamaConfigReader.Read once it lands.
using System.Text.Json;
using LlamaRun.Model;

namespace LlamaRun.RopeOpt;

/// <summary>Builds the LlamaConfig rope-opt works on.</summary>
public static class ModelConfig
{
    /// <summary>A plain-RoPE config with the given rotary geometry (sizes that RoPE does not use are placeholders).</summary>
    public static LlamaConfig FromFlags(int headDim, double theta, int trainedLength, double partialRotaryFactor = 1.0) => new()
    {
        HiddenSize = headDim, IntermediateSize = headDim, NumHiddenLayers = 1, NumAttentionHeads = 1, NumKeyValueHeads = 1,
        HeadDim = headDim, VocabSize = 1, RmsNormEps = 1e-5f, MaxPositionEmbeddings = trainedLength, TieWordEmbeddings = false,
        Rope = new RopeParameters { Theta = theta, PartialRotaryFactor = partialRotaryFactor },
    };

    /// <summary>Reads DIR/config.json (the RoPE geometry only; rope-opt works from plain RoPE).</summary>
    public static LlamaConfig FromModelDir(string dir)
    {
        string path = Path.Combine(dir, "config.json");
        if (!File.Exists(path)) throw ModelFormatException.In(path, "file not found");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            return ReadRopeKeys(path, doc.RootElement);
        }
        catch (JsonException e) { throw ModelFormatException.In(path, $"not valid JSON: {e.Message}", e); }
        catch (FormatException e) { throw ModelFormatException.In(path, $"a number is out of range: {e.Message}", e); }
    }

    private static LlamaConfig ReadRopeKeys(string path, JsonElement root)
    {
        int maxPos = Int(path, root, "max_position_embeddings") ?? throw ModelFormatException.In(path, "missing max_position_embeddings");
        int headDim = Int(path, root, "head_dim")
            ?? (Int(path, root, "hidden_size") is int h && Int(path, root, "num_attention_heads") is int n && n > 0 ? h / n
                : throw ModelFormatException.In(path, "missing head_dim (and hidden_size/num_attention_heads)"));
        JsonElement rp = root.TryGetProperty("rope_parameters", out var p) && p.ValueKind == JsonValueKind.Object ? p : root;
        double theta = Double(path, rp, "rope_theta") ?? Double(path, root, "rope_theta") ?? 10000.0;
        double partial = Double(path, rp, "partial_rotary_factor") ?? Double(path, root, "partial_rotary_factor") ?? 1.0;
        if (headDim < 2 || maxPos < 1 || !(theta > 1)) throw ModelFormatException.In(path, "head_dim, max_position_embeddings or rope_theta out of range");
        return FromFlags(headDim, theta, maxPos, partial);
    }

    private static int? Int(string path, JsonElement o, string key) =>
        o.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null
            ? v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw ModelFormatException.In(path, $"{key} must be an integer")
            : null;

    private static double? Double(string path, JsonElement o, string key) =>
        o.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null
            ? v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw ModelFormatException.In(path, $"{key} must be a number")
            : null;
}

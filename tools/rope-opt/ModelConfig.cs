// The LlamaConfig rope-opt works on: from `-m DIR` (LlamaConfigReader, as llama-run reads it) or from explicit flags.
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

    /// <summary>Reads DIR/config.json with the engine's reader (rope-opt then works from its plain RoPE geometry).</summary>
    public static LlamaConfig FromModelDir(string dir)
    {
        string path = Path.Combine(dir, "config.json");
        if (!File.Exists(path)) throw ModelFormatException.In(path, "file not found");
        return LlamaConfigReader.Read(path);
    }
}

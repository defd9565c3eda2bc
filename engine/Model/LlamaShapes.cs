// The shapes of well-known Llama checkpoints (their config.json values), by name, so that `llama-run bench --shape NAME`
// times a model whose files are not at hand (with RandomWeights). Exercised by tests/WeightsTests.cs.
namespace LlamaRun.Model;

public static class LlamaShapes
{
    private static LlamaConfig Shape(int hidden, int ffn, int layers, int heads, int kvHeads, int vocab, double theta, int maxPos) => new()
    {
        HiddenSize = hidden, IntermediateSize = ffn, NumHiddenLayers = layers, NumAttentionHeads = heads, NumKeyValueHeads = kvHeads,
        HeadDim = hidden / heads, VocabSize = vocab, RmsNormEps = 1e-5f, MaxPositionEmbeddings = maxPos, TieWordEmbeddings = false,
        Rope = new RopeParameters { Theta = theta }, BosTokenIds = [1], EosTokenIds = [2], TorchDType = Core.DType.BF16,
    };

    /// <summary>Name -> shape: Llama-2 7B, 13B and 70B; Llama-3 8B and 70B (their RoPE without the 3.1 scaling).</summary>
    public static IReadOnlyDictionary<string, LlamaConfig> All { get; } = new Dictionary<string, LlamaConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["llama2-7b"] = Shape(4096, 11008, 32, 32, 32, 32000, 10000, 4096),
        ["llama2-13b"] = Shape(5120, 13824, 40, 40, 40, 32000, 10000, 4096),
        ["llama2-70b"] = Shape(8192, 28672, 80, 64, 8, 32000, 10000, 4096),
        ["llama3-8b"] = Shape(4096, 14336, 32, 32, 8, 128256, 500000, 8192),
        ["llama3-70b"] = Shape(8192, 28672, 80, 64, 8, 128256, 500000, 8192),
    };

    /// <summary>The shape of name, or an ArgumentException listing the names.</summary>
    public static LlamaConfig Get(string name) =>
        All.TryGetValue(name, out var c) ? c : throw new ArgumentException($"unknown shape '{name}': one of {string.Join(", ", All.Keys)}");
}

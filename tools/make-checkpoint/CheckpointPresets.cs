// Named real-model shapes for random checkpoints (stories110m, llama2-7b, llama3-8b), shared by make-checkpoint and
// bench/GenerateBenchmarks.cs (linked there). `make-checkpoint --list` prints them.
using LlamaRun.Core;
using LlamaRun.Model;

namespace LlamaRun.MakeCheckpoint;

/// <summary>A named architecture and the weight type its random checkpoint is written in.</summary>
public sealed record CheckpointPreset(string Name, string Description, LlamaConfig Config, DType DType);

/// <summary>The built-in presets and a helper that writes a preset checkpoint once into a cache folder.</summary>
public static class CheckpointPresets
{
    public static IReadOnlyList<CheckpointPreset> All { get; } =
    [
        new("stories110m", "llama2.c stories110M: dim 768, 12 layers, 12 heads, FFN 2048, vocab 32000, tied, bf16",
            Make(hidden: 768, ffn: 2048, layers: 12, heads: 12, kvHeads: 12, vocab: 32000, maxPos: 1024, tied: true, theta: 10000), DType.BF16),
        new("llama2-7b", "Llama-2-7B: hidden 4096, 32 layers, 32 heads, FFN 11008, vocab 32000, bf16",
            Make(hidden: 4096, ffn: 11008, layers: 32, heads: 32, kvHeads: 32, vocab: 32000, maxPos: 4096, tied: false, theta: 10000), DType.BF16),
        new("llama3-8b", "Llama-3-8B: hidden 4096, 32 layers, 32/8 heads (GQA), FFN 14336, vocab 128256, bf16",
            Make(hidden: 4096, ffn: 14336, layers: 32, heads: 32, kvHeads: 8, vocab: 128256, maxPos: 8192, tied: false, theta: 500000), DType.BF16),
    ];

    /// <summary>The preset of that name; throws ArgumentException listing the names when there is none.</summary>
    public static CheckpointPreset Get(string name) =>
        All.FirstOrDefault(p => p.Name == name)
        ?? throw new ArgumentException($"unknown preset '{name}' (known: {string.Join(", ", All.Select(p => p.Name))})");

    /// <summary>A validated Llama config with the usual defaults (eps 1e-5, head dim = hidden / heads).</summary>
    public static LlamaConfig Make(int hidden, int ffn, int layers, int heads, int kvHeads, int vocab, int maxPos, bool tied, double theta,
        DType dtype = DType.BF16) => new()
    {
        HiddenSize = hidden,
        IntermediateSize = ffn,
        NumHiddenLayers = layers,
        NumAttentionHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = hidden / heads,
        VocabSize = vocab,
        RmsNormEps = 1e-5f,
        MaxPositionEmbeddings = maxPos,
        TieWordEmbeddings = tied,
        Rope = new RopeParameters { Theta = theta },
        BosTokenIds = [1],
        EosTokenIds = [2],
        TorchDType = dtype,
    };

    /// <summary>Writes the preset into cacheRoot/NAME unless a complete checkpoint is already there; returns the folder.</summary>
    public static string EnsureWritten(CheckpointPreset preset, string cacheRoot, int seed = 1)
    {
        string dir = Path.Combine(cacheRoot, preset.Name);
        string done = Path.Combine(dir, ".complete");
        if (File.Exists(done)) return dir;
        // Write into a sibling folder and rename, so an interrupted write never looks complete.
        string tmp = dir + ".partial-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        CheckpointWriter.WriteRandom(tmp, preset.Config, preset.DType, seed);
        File.WriteAllText(Path.Combine(tmp, ".complete"), preset.Description + "\n");
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.Move(tmp, dir);
        return dir;
    }

    /// <summary>The default cache folder: $LLAMA_BENCH_CACHE, else TEMP/llama-run-bench.</summary>
    public static string DefaultCacheRoot() =>
        Environment.GetEnvironmentVariable("LLAMA_BENCH_CACHE") is { Length: > 0 } env ? env
            : Path.Combine(Path.GetTempPath(), "llama-run-bench");
}

// `rope-opt keydims`: DPE's key-dimension selection (ROPE.md 6.3) added to any index-remap spec: the top K rotary pairs
// of each layer and KV head by mean |q_j| |k_j| over passkey prompts at the trained length take the grouped positions,
// the others keep the true distance; writes the table (only a table file keeps key dims). Example:
//   rope-opt keydims -m models/austen-passkey --rope dpe:w=64,g=4,2,16,8 --target 2048 --topk 24 --out dpe-k24.json
using System.Globalization;
using LlamaRun.Backends;
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using LlamaRun.Text;

namespace LlamaRun.RopeOpt;

public static class KeyDims
{
    public const string Usage = "usage: rope-opt keydims -m DIR --rope SPEC --target N --topk K [--trials T] [--seed S] [--device cpu|cuda|auto] --out FILE.json";

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        string? dir, spec, output, device;
        int? target, topK;
        int trials;
        ulong seed;
        try
        {
            var f = new SubcommandFlags(args, "--model", "--rope", "--target", "--topk", "--trials", "--seed", "--device", "--out");
            (dir, spec, output, device) = (f.String("--model"), f.String("--rope"), f.String("--out"), f.String("--device") ?? "auto");
            (target, topK, trials, seed) = (f.Positive("--target"), f.Positive("--topk"), f.Positive("--trials") ?? 2, (ulong)(f.Positive("--seed") ?? 1));
            if (dir is null || spec is null || target is null || topK is null || output is null)
                throw new ArgumentException("-m, --rope, --target, --topk and --out are required");
        }
        catch (ArgumentException e) { stderr.WriteLine($"rope-opt keydims: {e.Message}"); stderr.WriteLine(Usage); return 2; }
        try
        {
            var config = ModelConfig.FromModelDir(dir);
            var table = RopeMethods.Parse(spec, config, target.Value).Base;
            if (table.Remap is null) throw new ArgumentException($"--rope {spec} is not an index remap (key dims choose which pairs take its grouped positions)");
            var tokenizer = Tokenizer.FromModelDirectory(dir);
            using var backend = BackendFactory.Create(device, kernels: GpuKernelSet.For(config.HeadDim,
                config.NumAttentionHeads / config.NumKeyValueHeads, bf16Compute: false, remap: true));
            using var weights = LlamaWeights.Load(dir, config, backend);
            var keyDims = Select(config, weights, backend, tokenizer, topK.Value, trials, seed, stderr);
            table = table with { Remap = table.Remap.WithKeyDims(keyDims) };
            RopeTableFile.Save(table, output);
            stdout.WriteLine($"{table.Describe()} -> {output}");
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or ModelFormatException or IOException or UnauthorizedAccessException or GpuException)
        {
            stderr.WriteLine($"rope-opt keydims: {e.Message}");
            return 1;
        }
    }

    private static readonly double[] Depths = [0, 0.25, 0.5, 0.75, 1];

    /// <summary>The top-k pairs of every layer and KV head, scored over trials x 5 depths of passkey prompts at the trained length (plain RoPE there).</summary>
    public static RopeKeyDims Select(LlamaConfig config, LlamaWeights weights, IBackend backend, Tokenizer tokenizer, int topK, int trials, ulong seed, TextWriter log)
    {
        int trained = config.MaxPositionEmbeddings, pairs = config.RotaryDim / 2;
        if (topK > pairs) throw new ArgumentException($"--topk {topK} is more than the {pairs} rotary pairs");
        var rng = new Random(unchecked((int)seed));
        var prompts = Depths.SelectMany(d => Enumerable.Range(0, trials)
            .Select(_ => PasskeyTest.BuildPrompt(tokenizer, rng.Next(10000, 100000).ToString(CultureInfo.InvariantCulture), d, trained).Ids)).ToList();
        using var model = Llama.Create(config, weights, backend, trained, RopeMethods.FromConfig(config), maxBatch: backend.Capabilities.PrefillChunk);
        var keyDims = KeyDimSelection.Score(model, prompts).Top(topK);
        log.WriteLine($"key dims: the top {topK} of {pairs} pairs in each of {config.NumHiddenLayers} layers x {config.NumKeyValueHeads} KV heads, by mean |q_j| |k_j| over {prompts.Count} passkey prompts of {trained} tokens");
        for (int l = 0; l < config.NumHiddenLayers; l++)
            log.WriteLine($"  layer {l}: " + string.Join("; ", Enumerable.Range(0, config.NumKeyValueHeads)
                .Select(h => $"head {h} leaves {string.Join(",", Enumerable.Range(0, pairs).Where(j => !keyDims.IsSelected(l, h, j)))}")));
        return keyDims;
    }
}

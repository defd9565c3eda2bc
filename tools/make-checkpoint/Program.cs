// make-checkpoint: writes a random Llama checkpoint of a real shape (config.json + model.safetensors, no tokenizer).
//   make-checkpoint stories110m -o /tmp/stories110m        make-checkpoint --list
//   make-checkpoint -o DIR --hidden 1024 --ffn 2816 --layers 8 --heads 16 [--kv-heads 4] [--vocab 32000] [--dtype bf16]
using System.Diagnostics;
using System.Globalization;
using LlamaRun.Core;
using LlamaRun.MakeCheckpoint;
using LlamaRun.Model;

const string Usage =
    "usage: make-checkpoint [PRESET] -o DIR [--dtype bf16|f16|f32] [--seed N]\n" +
    "         [--hidden N --ffn N --layers N --heads N] [--kv-heads N] [--vocab N] [--max-pos N] [--theta X] [--tied|--untied]\n" +
    "       make-checkpoint --list";
try
{
    var flags = new Dictionary<string, string?>(StringComparer.Ordinal);
    string? presetName = null;
    for (int i = 0; i < args.Length; i++)
    {
        string a = args[i];
        if (a is "-h" or "--help") { Console.WriteLine(Usage); return 0; }
        if (a is "--list" or "--tied" or "--untied") { flags[a] = null; continue; }
        if (!a.StartsWith('-'))
        {
            if (presetName is not null) throw new ArgumentException($"unexpected argument '{a}'");
            presetName = a;
            continue;
        }
        if (i + 1 >= args.Length) throw new ArgumentException($"{a} needs a value");
        flags[a] = args[++i];
    }
    if (flags.ContainsKey("--list"))
    {
        foreach (var p in CheckpointPresets.All) Console.WriteLine($"{p.Name,-12} {p.Description}");
        return 0;
    }

    int Int(string name, int? fallback)
    {
        if (!flags.Remove(name, out var s)) return fallback ?? throw new ArgumentException($"{name} is required without a preset");
        return int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0 ? v
            : throw new ArgumentException($"{name} expects a positive integer, got '{s}'");
    }

    var preset = presetName is null ? null : CheckpointPresets.Get(presetName);
    var baseConfig = preset?.Config;
    string dir = flags.Remove("-o", out var o) && o is not null ? o : throw new ArgumentException("-o DIR is required");
    var dtype = flags.Remove("--dtype", out var d) ? d switch
    {
        "bf16" => DType.BF16, "f16" => DType.F16, "f32" => DType.F32,
        _ => throw new ArgumentException($"--dtype must be bf16, f16 or f32, got '{d}'"),
    } : preset?.DType ?? DType.BF16;
    int seed = Int("--seed", 1);
    int hidden = Int("--hidden", baseConfig?.HiddenSize), heads = Int("--heads", baseConfig?.NumAttentionHeads);
    int ffn = Int("--ffn", baseConfig?.IntermediateSize), layers = Int("--layers", baseConfig?.NumHiddenLayers);
    int kvHeads = Int("--kv-heads", baseConfig?.NumKeyValueHeads ?? heads), vocab = Int("--vocab", baseConfig?.VocabSize ?? 32000);
    int maxPos = Int("--max-pos", baseConfig?.MaxPositionEmbeddings ?? 4096);
    double theta = baseConfig?.Rope.Theta ?? 10000;
    if (flags.Remove("--theta", out var th) && !(double.TryParse(th, NumberStyles.Float, CultureInfo.InvariantCulture, out theta) && theta > 1))
        throw new ArgumentException($"--theta expects a number above 1, got '{th}'");
    bool tied = flags.Remove("--tied") || (!flags.Remove("--untied") && (baseConfig?.TieWordEmbeddings ?? false));
    if (flags.Count > 0) throw new ArgumentException($"unknown flag {flags.Keys.First()}\n{Usage}");
    if (hidden % heads != 0) throw new ArgumentException($"--hidden {hidden} is not a multiple of --heads {heads}");
    if (heads % kvHeads != 0) throw new ArgumentException($"--heads {heads} is not a multiple of --kv-heads {kvHeads}");

    var config = CheckpointPresets.Make(hidden, ffn, layers, heads, kvHeads, vocab, maxPos, tied, theta, dtype);
    var sw = Stopwatch.StartNew();
    CheckpointWriter.WriteRandom(dir, config, dtype, seed);
    long bytes = new FileInfo(Path.Combine(dir, Checkpoint.SingleFileName)).Length;
    Console.WriteLine($"{dir}: {preset?.Name ?? "custom"} {dtype.Name()}, {bytes / 1e6:F1} MB in {sw.Elapsed.TotalSeconds:F1} s");
    return 0;
}
catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"make-checkpoint: {e.Message}");
    return 1;
}

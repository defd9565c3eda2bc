// `rope-opt detect`: DPE's per-group effective-length detection (ROPE.md 6.2) on a model that retrieves. The rotary
// pairs split into groups of 8; each group in turn sweeps its group size over 1, 2, 4, ... while every other group is
// held at 2 N / L (N the target length, L the trained one); the passkey test at N scores each size (accuracy, then the
// key's NLL), and the best size of every group makes the DPE table written to --out. --topk K first selects DPE's key
// dimensions (ROPE.md 6.3: the K pairs of each layer and KV head with the largest mean |q_j| |k_j| over passkey prompts
// at the trained length); only they take the grouped positions, in the detection and in the table. Example:
//   rope-opt detect -m models/austen-passkey --target 2048 --trials 2 --topk 12 --out dpe.json
using System.Globalization;
using LlamaRun.Backends;
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using LlamaRun.Text;

namespace LlamaRun.RopeOpt;

/// <summary>Options of rope-opt detect.</summary>
public sealed record DetectOptions(string ModelDir, int Target, int? Window, int Trials, ulong Seed, string Device, string? Out, int PairsPerGroup = 8,
    int? TopK = null);

/// <summary>DPE's effective-length detection: a group size per group of rotary pairs, chosen by passkey retrieval.</summary>
public static class Detect
{
    public const string Usage = "usage: rope-opt detect -m DIR --target N [--window W] [--trials K] [--topk K] [--seed S] [--device cpu|cuda|auto] [--out FILE.json]";

    private static readonly double[] Depths = [0, 0.25, 0.5, 0.75, 1];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        DetectOptions o;
        try { o = Parse(args); }
        catch (ArgumentException e) { stderr.WriteLine($"rope-opt detect: {e.Message}"); stderr.WriteLine(Usage); return 2; }
        try
        {
            var table = Run(o, stderr);
            string spec = Spec(table);
            if (o.Out is { } path) RopeTableFile.Save(table, path);
            stdout.WriteLine($"{table.Describe()}{(o.Out is null ? "" : " -> " + o.Out)}");
            stdout.WriteLine(table.Remap!.KeyDims is null ? $"spec: {spec}" : $"spec: {spec} (without the key dims, which only the table file keeps)");
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or ModelFormatException or IOException or UnauthorizedAccessException or GpuException)
        {
            stderr.WriteLine($"rope-opt detect: {e.Message}");
            return 1;
        }
    }

    /// <summary>Runs the detection and returns the DPE table (window W, the chosen size per group).</summary>
    public static RopeTable Run(DetectOptions o, TextWriter log)
    {
        string configPath = Path.Combine(o.ModelDir, "config.json");
        if (!File.Exists(configPath)) throw new ArgumentException($"{o.ModelDir}: no config.json");
        var config = LlamaConfigReader.Read(configPath);
        int trained = config.MaxPositionEmbeddings, pairs = config.RotaryDim / 2;
        if (o.Target <= trained) throw new ArgumentException($"--target {o.Target} is not past the trained length {trained}");
        int window = o.Window ?? RemapRope.DefaultWindow(trained);
        int groups = Math.Max(1, pairs / o.PairsPerGroup);
        if (pairs % groups != 0) throw new ArgumentException($"{pairs} rotary pairs do not split into groups of {o.PairsPerGroup}");
        double hold = Math.Max(1, Math.Ceiling(2.0 * o.Target / trained));
        var candidates = new List<double>();
        for (double f = 1; f <= hold; f *= 2) candidates.Add(f);

        var tokenizer = Tokenizer.FromModelDirectory(o.ModelDir);
        using var backend = BackendFactory.Create(o.Device, kernels: GpuKernelSet.For(config.HeadDim,
            config.NumAttentionHeads / config.NumKeyValueHeads, bf16Compute: false, remap: true));
        using var weights = LlamaWeights.Load(o.ModelDir, config, backend);
        var keyDims = o.TopK is { } topK ? KeyDims.Select(config, weights, backend, tokenizer, topK, o.Trials, o.Seed, log) : null;
        RopeTable Dpe(double[] sizes)
        {
            var t = RemapRope.Dpe(config.RotaryDim, config.Rope.Theta, o.Target, sizes, window);
            return keyDims is null ? t : t with { Remap = t.Remap!.WithKeyDims(keyDims) };
        }
        var chosen = Enumerable.Repeat(hold, groups).ToArray();
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"detect: {groups} groups of {pairs / groups} pairs, window {window}, others held at {hold}, sizes {string.Join(",", candidates)}, passkey at {o.Target} ({o.Trials} x {Depths.Length} a size)"));
        for (int g = 0; g < groups; g++)
        {
            (double Size, double Accuracy, double Nll) best = (hold, -1, double.PositiveInfinity);
            foreach (double f in candidates)
            {
                var sizes = Enumerable.Repeat(hold, groups).ToArray();
                sizes[g] = f;
                var table = Dpe(sizes);
                using var model = Llama.Create(config, weights, backend, o.Target, RopeSchedule.Fixed(table), maxBatch: backend.Capabilities.PrefillChunk);
                var (correct, nll) = PasskeyTest.Evaluate(model, tokenizer, o.Target, o.Trials, o.Seed, Depths);
                double accuracy = correct.Sum() / (double)(o.Trials * Depths.Length), meanNll = nll.Average();
                log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  group {g} size {f}: passkey {accuracy:P0}, key NLL {meanNll:F3}"));
                if (accuracy > best.Accuracy || (accuracy == best.Accuracy && meanNll < best.Nll)) best = (f, accuracy, meanNll);
            }
            chosen[g] = best.Size;
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"group {g} (pairs {g * pairs / groups}-{(g + 1) * pairs / groups - 1}): size {best.Size}"));
        }
        return Dpe(chosen) with { Method = "dpe-detected" };
    }

    /// <summary>The --rope spec of a DPE table: dpe:w=W,g=G0,G1,...</summary>
    public static string Spec(RopeTable table)
    {
        var r = table.Remap ?? throw new ArgumentException("not a remap table");
        int pairs = r.Group.Length;
        var sizes = new List<float>();
        int per = 1;
        // The widest groups of pairs that the sizes are constant over.
        for (int w = pairs; w >= 1; w--)
            if (pairs % w == 0 && Enumerable.Range(0, pairs).All(j => r.Group[j] == r.Group[j / w * w])) { per = w; break; }
        for (int j = 0; j < pairs; j += per) sizes.Add(r.Group[j]);
        return string.Create(CultureInfo.InvariantCulture, $"dpe:w={r.Window},g={string.Join(",", sizes)}");
    }

    private static DetectOptions Parse(string[] args)
    {
        var f = new SubcommandFlags(args, "--model", "--target", "--window", "--trials", "--seed", "--device", "--out", "--topk");
        return new DetectOptions(f.String("--model") ?? throw new ArgumentException("-m DIR is required"),
            f.Positive("--target") ?? throw new ArgumentException("--target is required"), f.Positive("--window"), f.Positive("--trials") ?? 2,
            (ulong)(f.Positive("--seed") ?? 1), f.String("--device") ?? "auto", f.String("--out"), TopK: f.Positive("--topk"));
    }
}

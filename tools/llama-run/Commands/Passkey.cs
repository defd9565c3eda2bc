// `llama-run passkey [-m DIR] --ctx N [--rope SPEC] [--trials K] [--depths 0,0.25,...]`: hides a random 5-digit key
// at several depths of filler text filling the context, asks for it greedily, and prints accuracy per depth.
// `--sweep METHOD,... --ctx-list N,...` prints the methods x lengths table of accuracy over all depths (--json too).
using System.Globalization;
using System.Text;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Passkey
{
    public const string Usage = "llama-run passkey [-m DIR] --ctx N [--rope SPEC | --rope-table FILE] [--trials K] [--depths D1,D2,...] [--seed S] [--json] [--device D] [--kv bf16|f32]\n" +
                                "llama-run passkey [-m DIR] --sweep METHOD,... --ctx-list N,... [--trials K] [--depths D1,D2,...] [--seed S] [--json] [--device D] [--kv bf16|f32]";

    private const string Intro = "There is an important piece of information hidden inside a lot of irrelevant text. " +
                                 "Find it and memorize it. I will quiz you about it.\n";
    private const string Filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";
    private const string Question = "\nWhat is the pass key? The pass key is";

    public static int Run(Args args)
    {
        int trials = args.Int("--trials", 5, min: 1);
        ulong seed = args.ULong("--seed", 1);
        bool json = args.Has("--json");
        double[] depths = ParseDepths(args.String("--depths") ?? "0,0.25,0.5,0.75,1");
        string[] sweep = args.MethodList("--sweep");
        if (sweep.Length > 0) return Sweep(args, sweep, trials, seed, depths, json);
        int ctx = args.Int("--ctx", 0, min: 64);
        if (ctx == 0) throw new UsageException("passkey needs --ctx N (or --sweep with --ctx-list)");
        using var s = ModelSession.Open(args, ctx);
        args.RejectUnknown();
        if (s.RopeNote.Length > 0) Console.Error.WriteLine(s.RopeNote);
        var (correct, keyNll) = Evaluate(s.Model, s.Tokenizer, ctx, trials, seed, depths);

        if (json)
        {
            var sb = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"{{\"ctx\":{ctx},\"trials\":{trials},\"accuracy\":{{"));
            for (int d = 0; d < depths.Length; d++)
                sb.Append(CultureInfo.InvariantCulture, $"{(d > 0 ? "," : "")}\"{depths[d]:R}\":{(double)correct[d] / trials:R}");
            sb.Append("},\"key_nll\":{");
            for (int d = 0; d < depths.Length; d++)
                sb.Append(CultureInfo.InvariantCulture, $"{(d > 0 ? "," : "")}\"{depths[d]:R}\":{keyNll[d]:F4}");
            Console.WriteLine(sb.Append("}}"));
        }
        else
        {
            Console.WriteLine($"passkey retrieval, ctx {ctx}, {trials} trials per depth");
            Console.WriteLine("| depth | accuracy | key NLL (nats/token) |\n|---:|---:|---:|");
            for (int d = 0; d < depths.Length; d++)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {depths[d]:0.##} | {(double)correct[d] / trials:P0} | {keyNll[d]:F3} |"));
        }
        return 0;
    }

    // Methods x lengths: accuracy over all depths and trials, one model (and KV cache) per cell on the session's weights.
    private static int Sweep(Args args, string[] methods, int trials, ulong seed, double[] depths, bool json)
    {
        int[] ctxList = args.IntList("--ctx-list");
        if (ctxList.Length == 0) throw new UsageException("--sweep needs --ctx-list N1,N2,...");
        if (ctxList.Min() < 64) throw new UsageException("--ctx-list lengths must be at least 64");
        if (args.Has("--rope") || args.Has("--rope-table") || args.Has("--ctx")) throw new UsageException("--sweep names the methods and --ctx-list the lengths; drop --rope/--rope-table/--ctx");
        using var session = ModelSession.Open(args, ctxList.Max(), sweepMethods: methods);
        args.RejectUnknown();
        var accuracy = new double[methods.Length, ctxList.Length];
        for (int m = 0; m < methods.Length; m++)
            for (int c = 0; c < ctxList.Length; c++)
            {
                var (rope, note) = ModelSession.ChooseRope(session.Config, ctxList[c], methods[m] == "default" ? null : methods[m], null,
                    session.Backend.Capabilities.FastIndexRemap);
                using var model = session.CreateModel(ctxList[c], rope);
                var (correct, _) = Evaluate(model, session.Tokenizer, ctxList[c], trials, seed, depths);
                accuracy[m, c] = correct.Sum() / (double)(trials * depths.Length);
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{methods[m]} @ {ctxList[c]}: {accuracy[m, c]:P0}  ({(note.Length > 0 ? note : "rope: the checkpoint's own")})"));
            }
        Console.WriteLine(json ? SweepJson(methods, ctxList, accuracy, trials * depths.Length)
            : $"passkey accuracy, {trials} trials x {depths.Length} depths per cell\n" + SweepMarkdown(methods, ctxList, accuracy));
        return 0;
    }

    /// <summary>Correct answers and mean key NLL per depth over `trials` random keys each (keys drawn from seed).</summary>
    public static (int[] Correct, double[] KeyNll) Evaluate(Llama model, Tokenizer tok, int ctx, int trials, ulong seed, double[] depths)
    {
        var rng = new Random(unchecked((int)seed));
        var correct = new int[depths.Length];
        var keyNll = new double[depths.Length];
        for (int d = 0; d < depths.Length; d++)
            for (int t = 0; t < trials; t++)
            {
                string key = rng.Next(10000, 100000).ToString(CultureInfo.InvariantCulture);
                var (text, prompt) = BuildPrompt(tok, key, depths[d], ctx - 8);
                var (answer, nll) = Answer(model, tok, text, prompt, key, 8);
                if (answer.Contains(key, StringComparison.Ordinal)) correct[d]++;
                keyNll[d] += nll / trials;
            }
        return (correct, keyNll);
    }

    private static string SweepMarkdown(string[] methods, int[] ctxs, double[,] a)
    {
        var sb = new StringBuilder("| method |");
        foreach (int c in ctxs) sb.Append(CultureInfo.InvariantCulture, $" {c} |");
        sb.Append("\n|---|").Append(string.Concat(Enumerable.Repeat("---:|", ctxs.Length)));
        for (int m = 0; m < methods.Length; m++)
        {
            sb.Append(CultureInfo.InvariantCulture, $"\n| {methods[m]} |");
            for (int c = 0; c < ctxs.Length; c++) sb.Append(CultureInfo.InvariantCulture, $" {a[m, c] * 100:0}% |");
        }
        return sb.ToString();
    }

    private static string SweepJson(string[] methods, int[] ctxs, double[,] a, int samples)
    {
        var sb = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"{{\"samples\":{samples},\"accuracy\":{{"));
        for (int m = 0; m < methods.Length; m++)
        {
            if (m > 0) sb.Append(',');
            sb.Append('"').Append(methods[m].Replace("\\", "\\\\").Replace("\"", "\\\"")).Append("\":{");
            for (int c = 0; c < ctxs.Length; c++)
                sb.Append(CultureInfo.InvariantCulture, $"{(c > 0 ? "," : "")}\"{ctxs[c]}\":{a[m, c]:R}");
            sb.Append('}');
        }
        return sb.Append("}}").ToString();
    }

    /// <summary>Intro, filler with the key sentence at the given depth (0 = start, 1 = end), question; at most maxTokens.</summary>
    public static (string Text, int[] Ids) BuildPrompt(Tokenizer tok, string key, double depth, int maxTokens)
    {
        string needle = $"The pass key is {key}. Remember it. {key} is the pass key.\n";
        int fixedTokens = tok.Encode(Intro + needle + Question, addBos: true).Length;
        int fillerTokens = Math.Max(1, tok.Encode(Filler + Filler, addBos: false).Length / 2);
        int count = Math.Max(0, (maxTokens - fixedTokens) / fillerTokens);
        while (true)
        {
            int before = (int)Math.Round(count * depth);
            var text = new StringBuilder(Intro);
            for (int i = 0; i < before; i++) text.Append(Filler);
            text.Append(needle);
            for (int i = before; i < count; i++) text.Append(Filler);
            text.Append(Question);
            var ids = tok.Encode(text.ToString(), addBos: true);
            if (ids.Length <= maxTokens) return (text.ToString(), ids);
            if (count == 0) throw new UsageException($"--ctx {maxTokens + 8} is too short for the passkey prompt ({ids.Length} tokens)");
            count = Math.Max(0, count - Math.Max(1, (ids.Length - maxTokens) / fillerTokens));
        }
    }

    // Greedy answer of maxNew tokens, and the mean NLL of the key's tokens when they are fed after the question
    // (a graded retrieval signal for models too weak to copy the key outright).
    private static (string Answer, double KeyNll) Answer(Llama model, Tokenizer tok, string text, int[] prompt, string key, int maxNew)
    {
        var logits = new float[model.VocabSize];
        model.Reset();
        model.Forward(prompt, 0, LogitsRows.Last, logits);
        var afterPrompt = (float[])logits.Clone();

        var decoder = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        int pos = prompt.Length;
        for (int i = 0; i < maxNew && pos < model.MaxSeq; i++)
        {
            int next = CpuOps.Argmax(logits);
            sb.Append(decoder.Append(next));
            if (i + 1 < maxNew) model.Forward([next], pos++, LogitsRows.Last, logits);
        }
        sb.Append(decoder.Flush());

        var full = tok.Encode(text + " " + key, addBos: true);
        if (full.Length <= prompt.Length || !full.AsSpan(0, prompt.Length).SequenceEqual(prompt) || full.Length > model.MaxSeq)
            return (sb.ToString(), double.NaN);
        double nll = Evaluation.Nll(afterPrompt, full[prompt.Length]);
        for (int i = prompt.Length; i + 1 < full.Length; i++)
        {
            model.Forward([full[i]], i, LogitsRows.Last, logits);
            nll += Evaluation.Nll(logits, full[i + 1]);
        }
        return (sb.ToString(), nll / (full.Length - prompt.Length));
    }

    private static double[] ParseDepths(string s) => s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= 0 && v <= 1 ? v
            : throw new UsageException($"--depths expects numbers in [0, 1] separated by commas, got '{p}'")).ToArray();
}

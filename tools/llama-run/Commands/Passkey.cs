// `llama-run passkey [-m DIR] --ctx N [--rope SPEC] [--trials K] [--depths 0,0.25,...]`: hides a random 5-digit key
// at several depths of filler text filling the context, asks for it greedily, and prints accuracy per depth.
using System.Globalization;
using System.Text;
using LlamaRun.Model;
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Passkey
{
    public const string Usage = "llama-run passkey [-m DIR] --ctx N [--rope SPEC | --rope-table FILE] [--trials K] [--depths D1,D2,...] [--seed S] [--json]";

    private const string Intro = "There is an important piece of information hidden inside a lot of irrelevant text. " +
                                 "Find it and memorize it. I will quiz you about it.\n";
    private const string Filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";
    private const string Question = "\nWhat is the pass key? The pass key is";

    public static int Run(Args args)
    {
        int ctx = args.Int("--ctx", 0, min: 64);
        if (ctx == 0) throw new UsageException("passkey needs --ctx N");
        int trials = args.Int("--trials", 5, min: 1);
        ulong seed = args.ULong("--seed", 1);
        bool json = args.Has("--json");
        double[] depths = ParseDepths(args.String("--depths") ?? "0,0.25,0.5,0.75,1");
        using var s = ModelSession.Open(args, ctx);
        args.RejectUnknown();
        if (s.RopeNote.Length > 0) Console.Error.WriteLine(s.RopeNote);

        var rng = new Random(unchecked((int)seed));
        var correct = new int[depths.Length];
        for (int d = 0; d < depths.Length; d++)
            for (int t = 0; t < trials; t++)
            {
                string key = rng.Next(10000, 100000).ToString(CultureInfo.InvariantCulture);
                var prompt = BuildPrompt(s.Tokenizer, key, depths[d], ctx - 8);
                string answer = Answer(s.Model, s.Tokenizer, prompt, 8);
                if (answer.Contains(key, StringComparison.Ordinal)) correct[d]++;
            }

        if (json)
        {
            var sb = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"{{\"ctx\":{ctx},\"trials\":{trials},\"accuracy\":{{"));
            for (int d = 0; d < depths.Length; d++)
                sb.Append(CultureInfo.InvariantCulture, $"{(d > 0 ? "," : "")}\"{depths[d]:R}\":{(double)correct[d] / trials:R}");
            Console.WriteLine(sb.Append("}}"));
        }
        else
        {
            Console.WriteLine($"passkey retrieval, ctx {ctx}, {trials} trials per depth");
            Console.WriteLine("| depth | accuracy |\n|---:|---:|");
            for (int d = 0; d < depths.Length; d++)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {depths[d]:0.##} | {(double)correct[d] / trials:P0} |"));
        }
        return 0;
    }

    /// <summary>Intro, filler with the key sentence at the given depth (0 = start, 1 = end), question; at most maxTokens.</summary>
    public static int[] BuildPrompt(Tokenizer tok, string key, double depth, int maxTokens)
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
            if (ids.Length <= maxTokens) return ids;
            if (count == 0) throw new UsageException($"--ctx {maxTokens + 8} is too short for the passkey prompt ({ids.Length} tokens)");
            count = Math.Max(0, count - Math.Max(1, (ids.Length - maxTokens) / fillerTokens));
        }
    }

    private static string Answer(Llama model, Tokenizer tok, int[] prompt, int maxNew)
    {
        var logits = new float[model.VocabSize];
        model.Reset();
        model.Forward(prompt, 0, LogitsRows.Last, logits);
        var decoder = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        int pos = prompt.Length;
        for (int i = 0; i < maxNew && pos < model.MaxSeq; i++)
        {
            int next = Sampler.Argmax(logits);
            sb.Append(decoder.Append(next));
            model.Forward([next], pos++, LogitsRows.Last, logits);
        }
        return sb.Append(decoder.Flush()).ToString();
    }

    private static double[] ParseDepths(string s) => s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= 0 && v <= 1 ? v
            : throw new UsageException($"--depths expects numbers in [0, 1] separated by commas, got '{p}'")).ToArray();
}

// `llama-run [-m DIR] -p TEXT [-n N] [--ctx N] [sampling flags]`: streams generated text to stdout and prints
// prompt and decode speed to stderr. With no -m the embedded default model runs.
using System.Globalization;
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Generate
{
    public const string Usage =
        "llama-run [-m DIR] [-p TEXT | -f FILE] [-n N] [--ctx N] [--temp T] [--top-k K] [--top-p P] [--min-p P]\n" +
        "          [--repeat-penalty R] [--repeat-last-n N] [--seed S] [--device cpu|cuda|ilgpu-cpu|auto] [--rope SPEC | --rope-table FILE]\n" +
        "          [--compute mixed|f32|bf16] [--kv bf16|f32] [-b N]";

    public static int Run(Args args)
    {
        string? prompt = args.String("-p", "--prompt");
        string? promptFile = args.String("-f", "--file");
        if (prompt is not null && promptFile is not null) throw new UsageException("give either -p or -f, not both");
        if (promptFile is not null)
            prompt = File.Exists(promptFile) ? File.ReadAllText(promptFile) : throw new UsageException($"{promptFile}: no such file");
        prompt ??= "";
        int n = args.Int("-n", 256, min: -1);
        int ctx = args.Int("--ctx", 0, min: 0);
        var options = new SamplerOptions(
            Temperature: args.Float("--temp", 0.8f),
            TopK: args.Int("--top-k", 40, min: 0),
            TopP: args.Float("--top-p", 0.95f),
            MinP: args.Float("--min-p", 0.05f),
            RepetitionPenalty: args.Float("--repeat-penalty", 1.0f),
            RepetitionWindow: args.Int("--repeat-last-n", 64, min: 0),
            Seed: args.ULong("--seed", (ulong)Environment.TickCount64));
        try { options.Validate(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }

        using var s = ModelSession.Open(args, ctx);
        args.RejectUnknown();
        if (s.RopeNote.Length > 0) Console.Error.WriteLine(s.RopeNote);

        // Encoded once, and checked against the context before the prompt is echoed.
        int[] promptIds = s.Tokenizer.Encode(prompt, addBos: true);
        if (promptIds.Length >= s.Model.MaxSeq)
            throw new UsageException($"the prompt has {promptIds.Length} tokens and does not fit a context of {s.Model.MaxSeq} (raise --ctx)");
        var stdout = Console.Out;
        stdout.Write(prompt);
        GenerationStats stats;
        try
        {
            stats = Generator.Generate(s.Model, s.Tokenizer, promptIds, n, options, text =>
            {
                stdout.Write(text);
                stdout.Flush();
            });
        }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
        stdout.WriteLine();
        stdout.Flush();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"prompt: {stats.PromptTokens} tokens, {stats.PromptTokensPerSecond:F1} tokens/s; " +
            $"decode: {stats.GeneratedTokens} tokens, {stats.DecodeTokensPerSecond:F1} tokens/s ({s.Backend.Name}: {s.Backend.Device})"));
        return 0;
    }
}

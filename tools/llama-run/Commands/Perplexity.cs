// `llama-run perplexity`: exp(mean NLL) over up to K consecutive non-overlapping windows of N tokens from the start,
// every token of a window scored except the first. `--sweep METHODS --ctx-list L1,L2` prints a methods x lengths table.
using System.Globalization;
using System.Text;
using LlamaRun.Model;
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Perplexity
{
    public const string Usage = "llama-run perplexity [-m DIR] (-f TEXT | --ids FILE) --ctx N [--windows K] [--nll-out FILE] [--rope SPEC | --rope-table FILE] [--device D] [--compute mixed|f32|bf16] [--kv bf16|f32]\n" +
                                "llama-run perplexity [-m DIR] (-f TEXT | --ids FILE) --sweep METHOD,... --ctx-list N,... [--windows K] [--json] [--compute mixed|f32|bf16] [--kv bf16|f32]";

    public static int Run(Args args)
    {
        int windows = args.Int("--windows", int.MaxValue, min: 1);
        string[] sweep = args.MethodList("--sweep");
        int[] ctxList = args.IntList("--ctx-list");
        bool json = args.Has("--json");
        int ctx = args.Int("--ctx", 0, min: 2);
        string? textFile = args.String("-f", "--file"), idsFile = args.String("--ids");
        string? nllOut = args.String("--nll-out");
        if ((textFile is null) == (idsFile is null)) throw new UsageException("perplexity needs exactly one of -f TEXT or --ids FILE");

        if (sweep.Length == 0)
        {
            if (ctx == 0) throw new UsageException("perplexity needs --ctx N (or --sweep with --ctx-list)");
            using var s = ModelSession.Open(args, ctx, needTokenizer: textFile is not null);
            args.RejectUnknown();
            if (s.RopeNote.Length > 0) Console.Error.WriteLine(s.RopeNote);
            var ids = LoadIds(s, textFile, idsFile);
            var r = Run(() => Evaluation.Perplexity(s.Model, ids, ctx, windows));
            if (nllOut is not null)
                File.WriteAllLines(nllOut, r.Nll.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{{\"ctx\":{ctx},\"windows\":{r.Windows},\"tokens\":{r.Tokens},\"ppl\":{r.Ppl:R}}}"));
            return 0;
        }

        if (ctxList.Length == 0) throw new UsageException("--sweep needs --ctx-list N1,N2,...");
        if (args.Has("--rope") || args.Has("--rope-table")) throw new UsageException("--sweep names the methods; drop --rope/--rope-table");
        string[] methods = sweep;
        using var session = ModelSession.Open(args, ctxList.Max(), needTokenizer: textFile is not null, sweepMethods: methods);
        args.RejectUnknown();
        var tokens = LoadIds(session, textFile, idsFile);
        var table = new double[methods.Length, ctxList.Length];
        for (int m = 0; m < methods.Length; m++)
            for (int c = 0; c < ctxList.Length; c++)
            {
                var (rope, note) = SweepTable.Rope(session, ctxList[c], methods[m]);
                using var model = session.CreateModel(ctxList[c], rope);
                table[m, c] = Run(() => Evaluation.Perplexity(model, tokens, ctxList[c], windows)).Ppl;
                Console.Error.WriteLine($"{methods[m]} @ {ctxList[c]}: ppl {table[m, c]:F3}  ({note})");
            }
        Console.WriteLine(json ? SweepTable.Json("ppl", methods, ctxList, table) : SweepTable.Markdown(methods, ctxList, table, v => v.ToString("F2", CultureInfo.InvariantCulture)));
        return 0;
    }

    private static PerplexityResult Run(Func<PerplexityResult> f)
    {
        try { return f(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    /// <summary>Token ids from --ids (whitespace-separated) or from -f (paragraphs, as the held-out protocol).</summary>
    public static int[] LoadIds(ModelSession s, string? textFile, string? idsFile)
    {
        if (idsFile is not null)
        {
            if (!File.Exists(idsFile)) throw new UsageException($"{idsFile}: no such file");
            var parts = File.ReadAllText(idsFile).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            var ids = new int[parts.Length];
            for (int i = 0; i < parts.Length; i++)
                if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out ids[i]) || (uint)ids[i] >= (uint)s.Config.VocabSize)
                    throw new UsageException($"{idsFile}: item {i + 1} ('{parts[i]}') is not a token id below {s.Config.VocabSize}");
            return ids;
        }
        if (!File.Exists(textFile)) throw new UsageException($"{textFile}: no such file");
        return s.Tokenizer.EncodeParagraphs(File.ReadAllText(textFile!));
    }
}

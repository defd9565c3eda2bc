// `llama-run passkey [-m DIR] --ctx N [--rope SPEC] [--trials K] [--depths 0,0.25,...]`: hides a random 5-digit key
// at several depths of filler text filling the context, asks for it greedily, and prints accuracy per depth.
// `--sweep METHOD,... --ctx-list N,...` prints the methods x lengths table of accuracy over all depths (--json too).
using System.Globalization;
using System.Text;
using LlamaRun.Model;
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Passkey
{
    public const string Usage = "llama-run passkey [-m DIR] --ctx N [--rope SPEC | --rope-table FILE] [--trials K] [--depths D1,D2,...] [--seed S] [--json] [--device D] [--kv bf16|f32]\n" +
                                "llama-run passkey [-m DIR] --sweep METHOD,... --ctx-list N,... [--trials K] [--depths D1,D2,...] [--seed S] [--json] [--device D] [--kv bf16|f32]";

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
        var (correct, keyNll) = PasskeyTest.Evaluate(s.Model, s.Tokenizer, ctx, trials, seed, depths);

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
                var (rope, note) = SweepTable.Rope(session, ctxList[c], methods[m]);
                using var model = session.CreateModel(ctxList[c], rope);
                var (correct, _) = PasskeyTest.Evaluate(model, session.Tokenizer, ctxList[c], trials, seed, depths);
                accuracy[m, c] = correct.Sum() / (double)(trials * depths.Length);
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{methods[m]} @ {ctxList[c]}: {accuracy[m, c]:P0}  ({(note.Length > 0 ? note : "rope: the checkpoint's own")})"));
            }
        Console.WriteLine(json ? SweepTable.Json("accuracy", methods, ctxList, accuracy, $"\"samples\":{trials * depths.Length},")
            : $"passkey accuracy, {trials} trials x {depths.Length} depths per cell\n" + SweepTable.Markdown(methods, ctxList, accuracy, v => string.Create(CultureInfo.InvariantCulture, $"{v * 100:0}%")));
        return 0;
    }

    private static double[] ParseDepths(string s) => s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= 0 && v <= 1 ? v
            : throw new UsageException($"--depths expects numbers in [0, 1] separated by commas, got '{p}'")).ToArray();
}

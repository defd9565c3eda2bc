// llama-run: run Hugging Face Llama checkpoints. `llama-run --help` lists the commands.
// Every failure the user can cause ends in one line on stderr and a non-zero exit code, never a stack trace.
using LlamaRun.Cli;
using LlamaRun.Cli.Commands;
using LlamaRun.Model;

string[] switches = ["--no-bos", "--json", "--ops-only", "--profile", "--kernels", "-h", "--help"];
try
{
    if (args.Length > 0 && (args[0] is "-h" or "--help" or "help"))
    {
        Console.WriteLine(Help());
        return 0;
    }
    string command = args.Length > 0 && !args[0].StartsWith('-') ? args[0] : "generate";
    var rest = command == "generate" && (args.Length == 0 || args[0].StartsWith('-')) ? args : args[1..];
    var a = new Args(rest, new HashSet<string>(switches));
    if (a.Has("-h") || a.Has("--help")) { Console.WriteLine(Help()); return 0; }
    return command switch
    {
        "generate" => Generate.Run(a),
        "perplexity" => Perplexity.Run(a),
        "tokenize" => Tokenize.Run(a),
        "passkey" => Passkey.Run(a),
        "check" => Check.Run(a),
        "bench" => Bench.Run(a),
        _ => throw new UsageException($"unknown command '{command}' (see llama-run --help)"),
    };
}
catch (Exception e) when (e is UsageException or ModelFormatException or IOException or UnauthorizedAccessException or ArgumentException
    or OutOfMemoryException or LlamaRun.Backends.Gpu.GpuException or LlamaRun.Core.CollectiveAbortedException)
{
    Console.Out.Flush();
    Console.Error.WriteLine($"llama-run: {Flatten(e.Message)}");
    return 1;
}
catch (Exception e)
{
    Console.Out.Flush();
    Console.Error.WriteLine($"llama-run: internal error ({e.GetType().Name}): {Flatten(e.Message)}");
    return 2;
}

// One line, without .NET's " (Parameter 'name')" suffix.
static string Flatten(string s) => System.Text.RegularExpressions.Regex.Replace(s.ReplaceLineEndings(" "), @" \(Parameter '[^']*'\)$", "");

static string Help() => string.Join('\n',
    "llama-run: run Llama checkpoints (Hugging Face config.json + safetensors + tokenizer).",
    "", "  " + Generate.Usage, "  " + Perplexity.Usage.Replace("\n", "\n  "), "  " + Tokenize.Usage, "  " + Passkey.Usage,
    "  " + Check.Usage, "  " + Bench.Usage);

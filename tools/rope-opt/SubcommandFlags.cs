// The flags of rope-opt's subcommands (detect, keydims): "--name value" pairs, -m for --model, unknown names and
// malformed numbers refused with one line (ArgumentException, which the subcommand prints with its usage).
using System.Globalization;

namespace LlamaRun.RopeOpt;

/// <summary>Parsed "--name value" flags of one subcommand.</summary>
internal sealed class SubcommandFlags
{
    private readonly Dictionary<string, string> _values = [];

    /// <summary>Parses args; names lists the flags the subcommand takes ("--model" also answers to -m).</summary>
    public SubcommandFlags(string[] args, params string[] names)
    {
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i] == "-m" ? "--model" : args[i];
            if (!names.Contains(name)) throw new ArgumentException($"unknown argument '{args[i]}'");
            if (i + 1 >= args.Length) throw new ArgumentException($"{args[i]} needs a value");
            _values[name] = args[++i];
        }
    }

    public string? String(string name) => _values.GetValueOrDefault(name);

    /// <summary>The flag as a positive integer, or null when absent.</summary>
    public int? Positive(string name) => _values.TryGetValue(name, out string? v)
        ? int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n > 0 ? n
            : throw new ArgumentException($"{name} expects a positive integer, got '{v}'")
        : null;
}

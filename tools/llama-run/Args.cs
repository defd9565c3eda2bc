// Command-line flags as typed values: `-m DIR`, `--ctx 4096`, `--no-bos`. Unknown or malformed flags are errors.
using System.Globalization;

namespace LlamaRun.Cli;

/// <summary>A user mistake on the command line or in the inputs it names; printed as one line.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>Parsed flags of one command; each getter checks the type and marks the flag as used.</summary>
public sealed class Args
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    /// <summary>Parses flags; names in `switches` take no value.</summary>
    public Args(IEnumerable<string> args, IReadOnlySet<string> switches)
    {
        using var e = args.GetEnumerator();
        while (e.MoveNext())
        {
            string flag = e.Current;
            if (!flag.StartsWith('-') || flag == "-" ) throw new UsageException($"unexpected argument '{flag}'");
            string? value = null;
            int eq = flag.IndexOf('=');
            if (flag.StartsWith("--") && eq > 0) { value = flag[(eq + 1)..]; flag = flag[..eq]; }
            else if (!switches.Contains(flag))
            {
                if (!e.MoveNext()) throw new UsageException($"{flag} needs a value");
                value = e.Current;
            }
            if (!_values.TryAdd(flag, value)) throw new UsageException($"{flag} given twice");
        }
    }

    public bool Has(string flag) { _used.Add(flag); return _values.ContainsKey(flag); }

    public string? String(params string[] names)
    {
        foreach (var n in names)
        {
            _used.Add(n);
            if (_values.TryGetValue(n, out var v)) return v ?? throw new UsageException($"{n} needs a value");
        }
        return null;
    }

    public int Int(string name, int fallback, int min = int.MinValue)
    {
        var s = String(name);
        if (s is null) return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)) throw new UsageException($"{name} expects an integer, got '{s}'");
        if (v < min) throw new UsageException($"{name} must be at least {min}, got {v}");
        return v;
    }

    public float Float(string name, float fallback)
    {
        var s = String(name);
        if (s is null) return fallback;
        if (!float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out float v) || !float.IsFinite(v))
            throw new UsageException($"{name} expects a number, got '{s}'");
        return v;
    }

    public ulong ULong(string name, ulong fallback)
    {
        var s = String(name);
        if (s is null) return fallback;
        if (!ulong.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out ulong v)) throw new UsageException($"{name} expects a non-negative integer, got '{s}'");
        return v;
    }

    public int[] IntList(string name)
    {
        var s = String(name);
        if (s is null) return [];
        return s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(p =>
            int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0 ? v
                : throw new UsageException($"{name} expects positive integers separated by commas, got '{p}'")).ToArray();
    }

    /// <summary>A --sweep list of --rope specs (RopeMethods.SplitSpecs), empty when the flag is absent.</summary>
    public string[] MethodList(string name) => String(name) is { } s ? LlamaRun.Rope.RopeMethods.SplitSpecs(s) : [];

    /// <summary>Throws for any flag that no getter asked for (so typos are not silently ignored).</summary>
    public void RejectUnknown()
    {
        foreach (var k in _values.Keys)
            if (!_used.Contains(k)) throw new UsageException($"unknown option {k} (see llama-run --help)");
    }
}

// rope-opt's command line, callable in-process (tests/RopeOptTests.cs): parse flags, compute, print, save, plot.
//   rope-opt (-m DIR | --head-dim D --base B --orig L) --target L' [--compare pi,yarn,dprope,...] [--method SPEC]
//            [--bins 360] [--out FILE.json] [--json] [--plot FILE.svg] [--pairs 10,40,60]
//   rope-opt detect -m DIR --target N [...]: DPE's per-group detection by passkey retrieval (Detect.cs)
//   rope-opt keydims -m DIR --rope SPEC --target N --topk K --out FILE: DPE's key dims added to a remap (KeyDims.cs)
using System.Globalization;
using System.Text.Json;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.RopeOpt;

/// <summary>Parsed rope-opt options.</summary>
public sealed record RopeOptOptions
{
    public string? ModelDir { get; init; }
    public int? HeadDim { get; init; }
    public double? Base { get; init; }
    public int? Orig { get; init; }
    public int? Target { get; init; }
    public int Bins { get; init; } = 360;
    public List<string> Compare { get; init; } = [];
    public string Method { get; init; } = "dprope-plus";
    public string? Out { get; init; }
    public bool Json { get; init; }
    public string? Plot { get; init; }
    public List<int> Pairs { get; init; } = [];
}

/// <summary>The rope-opt program as a function of its arguments and output streams.</summary>
public static class RopeOptCli
{
    public const string Usage =
        "usage: rope-opt (-m DIR | --head-dim D --base B --orig L) --target L' [--compare pi,yarn,dprope,dprope-plus] " +
        "[--method SPEC] [--bins N] [--out FILE.json] [--json] [--plot FILE.svg] [--pairs j,k,...]\n" + Detect.Usage + "\n" + KeyDims.Usage;

    /// <summary>Runs rope-opt; returns the process exit code (0 ok, 1 bad input, 2 usage).</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length > 0 && args[0] == "detect") return Detect.Run(args[1..], stdout, stderr);
        if (args.Length > 0 && args[0] == "keydims") return KeyDims.Run(args[1..], stdout, stderr);
        RopeOptOptions o;
        try { o = ParseArgs(args); }
        catch (ArgumentException e) { stderr.WriteLine($"rope-opt: {e.Message}"); stderr.WriteLine(Usage); return 2; }
        try
        {
            var c = Compute(o);
            if (o.Out is { } outPath) RopeTableFile.Save(c.Saved, outPath);
            if (o.Plot is { } plotPath) File.WriteAllText(plotPath, SvgPlot.Render(c, o.Pairs));
            if (o.Json) WriteJson(c, o, stdout); else WriteSummary(c, o, stdout);
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or ModelFormatException or IOException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"rope-opt: {e.Message}");
            return 1;
        }
    }

    /// <summary>The comparison the options ask for.</summary>
    public static Comparison Compute(RopeOptOptions o)
    {
        LlamaConfig config = o.ModelDir is { } dir
            ? ModelConfig.FromModelDir(dir)
            : ModelConfig.FromFlags(o.HeadDim ?? throw new ArgumentException("--head-dim is required without -m"),
                o.Base ?? 10000.0, o.Orig ?? throw new ArgumentException("--orig is required without -m"));
        if (o.ModelDir is not null && (o.HeadDim is not null || o.Base is not null || o.Orig is not null))
            config = ModelConfig.FromFlags(o.HeadDim ?? config.HeadDim, o.Base ?? config.Rope.Theta, o.Orig ?? config.MaxPositionEmbeddings,
                config.Rope.PartialRotaryFactor);
        int trained = config.MaxPositionEmbeddings;
        int target = o.Target ?? throw new ArgumentException("--target is required");
        if (target < trained) throw new ArgumentException($"--target {target} is below the trained length {trained}");
        var setup = new DpropeSetup(config.RotaryDim, config.Rope.Theta, trained, target, o.Bins);
        return Objective.Run(config, setup, o.Compare.Count > 0 ? o.Compare : ["pi", "yarn", "dprope", "dprope-plus"], o.Method);
    }

    /// <summary>Parses the command line (throws ArgumentException on bad usage).</summary>
    public static RopeOptOptions ParseArgs(string[] args)
    {
        var o = new RopeOptOptions();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            o = a switch
            {
                "-m" or "--model" => o with { ModelDir = Next() },
                "--head-dim" => o with { HeadDim = PositiveInt(a, Next()) },
                "--base" => o with { Base = Number(a, Next()) },
                "--orig" => o with { Orig = PositiveInt(a, Next()) },
                "--target" => o with { Target = PositiveInt(a, Next()) },
                "--bins" => o with { Bins = PositiveInt(a, Next()) },
                "--compare" => o with { Compare = [.. o.Compare, .. RopeMethods.SplitSpecs(Next())] },
                "--method" => o with { Method = Next() },
                "--out" => o with { Out = Next() },
                "--json" => o with { Json = true },
                "--plot" => o with { Plot = Next() },
                "--pairs" => o with { Pairs = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries).Select(p => PositiveInt(a, p, allowZero: true))] },
                "-h" or "--help" => throw new ArgumentException("help"),
                _ => throw new ArgumentException($"unknown argument '{a}'"),
            };
        }
        return o;
    }

    private static int PositiveInt(string flag, string v, bool allowZero = false) =>
        int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) && (i > 0 || (allowZero && i == 0))
            ? i : throw new ArgumentException($"{flag} expects a positive integer, got '{v}'");

    private static double Number(string flag, string v) =>
        double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d)
            ? d : throw new ArgumentException($"{flag} expects a number, got '{v}'");

    private static void WriteJson(Comparison c, RopeOptOptions o, TextWriter stdout)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("rotary_dim", c.Setup.RotaryDim);
            w.WriteNumber("base", c.Setup.Theta);
            w.WriteNumber("orig", c.Setup.PretrainedLength);
            w.WriteNumber("target", c.Setup.TargetLength);
            w.WriteNumber("bins", c.Setup.Bins);
            w.WriteStartObject("disturbance");
            foreach (var m in c.Methods) w.WriteNumber(m.Name, m.Mean);
            w.WriteEndObject();
            w.WriteStartObject("interpolated_pairs");
            foreach (var m in c.Methods) w.WriteNumber(m.Name, m.Table.InterpolatedPairs);
            w.WriteEndObject();
            w.WriteStartObject("magnitude");
            foreach (var m in c.Methods) w.WriteNumber(m.Name, m.Table.Magnitude);
            w.WriteEndObject();
            w.WriteStartObject("per_pair");
            foreach (var m in c.Methods)
            {
                w.WriteStartArray(m.Name);
                foreach (double d in m.Disturbance) w.WriteNumberValue(d);
                w.WriteEndArray();
            }
            w.WriteEndObject();
            w.WriteString("saved_method", c.SavedName);
            if (o.Out is not null) w.WriteString("out", o.Out);
            w.WriteEndObject();
        }
        stdout.WriteLine(System.Text.Encoding.UTF8.GetString(ms.ToArray()));
    }

    private static void WriteSummary(Comparison c, RopeOptOptions o, TextWriter stdout)
    {
        var s = c.Setup;
        var inv = CultureInfo.InvariantCulture;
        stdout.WriteLine(string.Format(inv, "rotary dim {0}, base {1}, trained {2} -> target {3} (s = {4:0.###}), {5} bins",
            s.RotaryDim, s.Theta, s.PretrainedLength, s.TargetLength, s.Scale, s.Bins));
        stdout.WriteLine(string.Format(inv, "{0,-28} {1,14} {2,8} {3,10}", "method", "D (x1e-3)", "interp", "magnitude"));
        foreach (var m in c.Methods)
            stdout.WriteLine(string.Format(inv, "{0,-28} {1,14:0.0000} {2,5}/{3,-2} {4,10:0.0000}",
                m.Name, m.Mean * 1e3, m.Table.InterpolatedPairs, m.Table.InvFreq.Length, m.Table.Magnitude));
        stdout.WriteLine($"saved/selected: {c.Saved.Describe()}{(o.Out is null ? "" : " -> " + o.Out)}");
        var plain = PlainRope.Default(s.RotaryDim, s.Theta).InvFreq;
        stdout.Write(string.Format(inv, "{0,4} {1,12} {2,9}", "pair", "wavelength", "divisor"));
        foreach (var m in c.Methods) stdout.Write(string.Format(inv, " {0,12}", Short(m.Name)));
        stdout.WriteLine("   (D x1e-3 per method)");
        for (int j = 0; j < plain.Length; j++)
        {
            stdout.Write(string.Format(inv, "{0,4} {1,12:0.0} {2,9:0.###}", j, 2 * Math.PI / plain[j], plain[j] / c.Saved.InvFreq[j]));
            foreach (var m in c.Methods) stdout.Write(string.Format(inv, " {0,12:0.000}", m.Disturbance[j] * 1e3));
            stdout.WriteLine();
        }
    }

    private static string Short(string name) => name.Length <= 12 ? name : name[..12];
}

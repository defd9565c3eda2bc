// Entry points that turn a checkpoint config or a `--rope METHOD[:key=value,...]` flag into a RopeSchedule, and the
// default for `--ctx N` past the trained length. Example: RopeMethods.Parse("yarn:beta_fast=16", config, 4096).
// Methods: none|default, linear|pi, ntk, dynamic, yarn, llama3, longrope, abf, eabf, dprope, dprope-plus|auto, and the
// index remaps rerope, leaky-rerope, selfextend, dpe (RemapRope.cs).
using System.Globalization;
using LlamaRun.Core;
using LlamaRun.Model;

namespace LlamaRun.Rope;

/// <summary>Builds RoPE schedules from configs and command-line specs.</summary>
public static class RopeMethods
{
    /// <summary>The method names Parse accepts.</summary>
    public static readonly string[] Names =
        ["none", "default", "linear", "pi", "ntk", "dynamic", "yarn", "llama3", "longrope", "abf", "eabf", "dprope", "dprope-plus", "auto",
         "rerope", "leaky-rerope", "selfextend", "dpe"];

    /// <summary>The checkpoint's own RoPE (transformers semantics for every rope_type).</summary>
    public static RopeSchedule FromConfig(LlamaConfig config)
    {
        var r = config.Rope;
        int dim = config.RotaryDim;
        double theta = r.Theta;
        int maxPos = config.MaxPositionEmbeddings;
        switch (r.Type)
        {
            case RopeType.Default:
                return RopeSchedule.Fixed(PlainRope.Default(dim, theta));
            case RopeType.Linear:
                return RopeSchedule.Fixed(PlainRope.Linear(dim, theta, Required(r.Factor, "factor", r.Type)));
            case RopeType.Dynamic:
                return BaseChangeRope.DynamicNtk(dim, theta, Required(r.Factor, "factor", r.Type), maxPos);
            case RopeType.Yarn:
            {
                int orig = r.OriginalMaxPositionEmbeddings ?? maxPos;
                var o = new YarnOptions(r.Factor ?? maxPos / (double)orig, orig, r.BetaFast ?? 32.0, r.BetaSlow ?? 1.0,
                    r.Truncate ?? true, r.AttentionFactor, r.Mscale, r.MscaleAllDim);
                return RopeSchedule.Fixed(YarnRope.Build(dim, theta, o));
            }
            case RopeType.Llama3:
                return RopeSchedule.Fixed(Llama3Rope.Build(dim, theta, new Llama3Options(Required(r.Factor, "factor", r.Type),
                    Required(r.LowFreqFactor, "low_freq_factor", r.Type), Required(r.HighFreqFactor, "high_freq_factor", r.Type),
                    Required(r.OriginalMaxPositionEmbeddings, "original_max_position_embeddings", r.Type))));
            case RopeType.LongRope:
                return LongRope.Schedule(dim, theta, new LongRopeOptions(
                    r.ShortFactor ?? throw Missing("short_factor", r.Type), r.LongFactor ?? throw Missing("long_factor", r.Type),
                    r.OriginalMaxPositionEmbeddings ?? maxPos, maxPos, r.Factor, r.AttentionFactor));
            default:
                throw new ModelFormatException($"config: unsupported rope_type {r.Type}");
        }
    }

    /// <summary>The length the checkpoint was pre-trained at (original_max_position_embeddings when given).</summary>
    public static int TrainedLength(LlamaConfig config) =>
        config.Rope.Type == RopeType.Default ? config.MaxPositionEmbeddings
            : config.Rope.OriginalMaxPositionEmbeddings ?? config.MaxPositionEmbeddings;

    /// <summary>
    /// The default for --ctx: the checkpoint's own RoPE within max_position_embeddings (and for checkpoints that
    /// already scale theirs); past the trained length of a plain-RoPE checkpoint, leaky-rerope (window L/4, every distance
    /// kept inside 3/4 of L, log-n query scale: the best passkey retrieval and perplexity measured, README) where the
    /// backend runs index remaps at full speed (fastRemap), else dprope-plus (the best frequency-table method measured).
    /// </summary>
    public static RopeSchedule Default(LlamaConfig config, int targetCtx, bool fastRemap = true)
    {
        if (config.Rope.Type != RopeType.Default || targetCtx <= config.MaxPositionEmbeddings) return FromConfig(config);
        int trained = config.MaxPositionEmbeddings;
        if (DefaultRemaps(config, targetCtx, fastRemap))
            return RopeSchedule.Fixed(RemapRope.LeakyReRope(config.RotaryDim, config.Rope.Theta, trained, targetCtx,
                RemapRope.DefaultWindow(trained), k: null, logn: true, fill: RemapRope.DefaultFill));
        var setup = new DpropeSetup(config.RotaryDim, config.Rope.Theta, trained, targetCtx);
        return RopeSchedule.Fixed(DpropePlus.Build(setup, new DpropePlusOptions()));
    }

    /// <summary>Whether Default picks an index remap (without building its table).</summary>
    public static bool DefaultRemaps(LlamaConfig config, int targetCtx, bool fastRemap) =>
        fastRemap && config.Rope.Type == RopeType.Default && targetCtx > config.MaxPositionEmbeddings;

    /// <summary>Whether a --rope spec names an index-remap method (rerope, leaky-rerope, selfextend, dpe).</summary>
    public static bool IsRemap(string spec) =>
        (spec.IndexOf(':') is int c and >= 0 ? spec[..c] : spec).Trim().ToLowerInvariant() is "rerope" or "leaky-rerope" or "selfextend" or "dpe";

    /// <summary>Parses `METHOD[:key=value,...]` for a run of targetCtx tokens; factors default to targetCtx / trained length.</summary>
    public static RopeSchedule Parse(string spec, LlamaConfig config, int targetCtx)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int colon = spec.IndexOf(':');
        string method = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        var args = new SpecArgs(spec, colon < 0 ? "" : spec[(colon + 1)..]);
        int dim = config.RotaryDim;
        double theta = config.Rope.Theta;
        int trained = TrainedLength(config);
        double s = Math.Max(1.0, targetCtx / (double)trained);
        RopeSchedule result = method switch
        {
            "none" or "default" => RopeSchedule.Fixed(PlainRope.Default(dim, theta)),
            "linear" or "pi" => RopeSchedule.Fixed(PlainRope.Linear(dim, theta, args.Double("factor", s))),
            "ntk" => RopeSchedule.Fixed(BaseChangeRope.Ntk(dim, theta, args.Double("factor", s))),
            "dynamic" => BaseChangeRope.DynamicNtk(dim, theta, args.Double("factor", s), args.Int("orig", trained)),
            "yarn" => RopeSchedule.Fixed(YarnRope.Build(dim, theta, new YarnOptions(args.Double("factor", s), args.Int("orig", trained),
                args.Double("beta_fast", 32), args.Double("beta_slow", 1), args.Int("truncate", 1) != 0, args.OptionalDouble("attention_factor")))),
            "llama3" => RopeSchedule.Fixed(Llama3Rope.Build(dim, theta, new Llama3Options(args.Double("factor", s),
                args.Double("low", 1), args.Double("high", 4), args.Int("orig", trained)))),
            "longrope" => config.Rope.Type == RopeType.LongRope ? FromConfig(config)
                : throw new ArgumentException($"--rope {spec}: longrope needs short_factor/long_factor from a longrope checkpoint"),
            "abf" => RopeSchedule.Fixed(BaseChangeRope.Abf(dim, args.Double("base", CriticalBase(theta, trained, Math.Max(targetCtx, trained))), theta)),
            "eabf" => RopeSchedule.Fixed(BaseChangeRope.EntropyAbf(dim, theta, trained, args.Double("base", BaseChangeRope.EntropyAbfBase),
                args.Int("skip", 2))),
            "dprope" => RopeSchedule.Fixed(Dprope.PaperTable(new DpropeSetup(dim, theta, trained, args.Int("target", Math.Max(targetCtx, trained)),
                args.Int("bins", 360)), new DpropeSelection(args.Double("t", 0), args.OptionalInt("n")))),
            "dprope-plus" or "auto" => RopeSchedule.Fixed(DpropePlus.Build(
                new DpropeSetup(dim, theta, trained, args.Int("target", Math.Max(targetCtx, trained))), PlusOptions(args))),
            "rerope" => RopeSchedule.Fixed(RemapRope.ReRope(dim, theta, trained, args.Int("w", RemapRope.DefaultReRopeWindow(trained)),
                args.Int("logn", 1) != 0)),
            "leaky-rerope" => RopeSchedule.Fixed(RemapRope.LeakyReRope(dim, theta, trained, Math.Max(targetCtx, trained),
                args.Int("w", RemapRope.DefaultWindow(trained)), args.OptionalDouble("k"), args.Int("logn", 1) != 0, args.Double("fill", RemapRope.DefaultFill),
                args.OptionalDouble("logc"))),
            "selfextend" => RopeSchedule.Fixed(SelfExtend(dim, theta, trained, Math.Max(targetCtx, trained), args)),
            "dpe" => RopeSchedule.Fixed(Dpe(dim, theta, trained, Math.Max(targetCtx, trained), args)),
            _ => throw new ArgumentException($"--rope {spec}: unknown method '{method}' (expected one of {string.Join(", ", Names)})"),
        };
        args.EnsureAllUsed();
        return result;
    }

    /// <summary>
    /// Splits a comma-separated list of specs: "yarn,selfextend:g=8,w=64,dpe:w=64,g=2,8" is yarn, selfextend:g=8,w=64
    /// and dpe:w=64,g=2,8 (a part with '=' but no ':', or a bare number, continues the spec before it).
    /// </summary>
    public static string[] SplitSpecs(string text)
    {
        var specs = new List<string>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            bool continues = specs.Count > 0 && specs[^1].Contains(':') && !part.Contains(':')
                && (part.Contains('=') || double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out _));
            if (continues) specs[^1] += "," + part;
            else specs.Add(part);
        }
        return [.. specs];
    }

    /// <summary>One line for stderr: method, factor, interpolated pairs (and whether the table follows the length).</summary>
    public static string Describe(RopeSchedule schedule) =>
        schedule.Base.Describe() + (schedule.IsLengthDependent ? "; table changes with sequence length" : "");

    /// <summary>Scaling-law critical base b^(log_{L/2pi}(L'/2pi)): the base whose slowest trained pair spans L' as it spanned L.</summary>
    public static double CriticalBase(double theta, int trained, int target) =>
        Math.Pow(theta, Math.Log(target / (2 * Math.PI)) / Math.Log(trained / (2 * Math.PI)));

    private static RopeTable SelfExtend(int dim, double theta, int trained, int target, SpecArgs a)
    {
        int w = a.Int("w", RemapRope.DefaultWindow(trained));
        double fill = a.Double("fill", 0.5);
        int g = a.OptionalInt("g") ?? RemapRope.DefaultGroup(trained, target, w, fill);
        return RemapRope.SelfExtend(dim, theta, target, g, w, a.OptionalDouble("scale_base"));
    }

    private static RopeTable Dpe(int dim, double theta, int trained, int target, SpecArgs a)
    {
        int w = a.Int("w", RemapRope.DefaultWindow(trained));
        double fill = a.Double("fill", 0.5);
        double[] groups = a.OptionalDoubleList("g") ?? [RemapRope.DefaultGroup(trained, target, w, fill)];
        return RemapRope.Dpe(dim, theta, target, groups, w);
    }

    private static DpropePlusOptions PlusOptions(SpecArgs a)
    {
        var d = new DpropePlusOptions();
        return new DpropePlusOptions
        {
            Steps = a.Int("steps", d.Steps), Tolerance = a.Double("tol", d.Tolerance), YarnCandidate = a.Int("yarn", 1) != 0,
            Magnitude = a.Int("mag", 1) != 0, QueryScale = a.Int("q", 0) != 0, SkipLayers = a.Int("skip", d.SkipLayers),
            KeepTurns = a.Double("keep", d.KeepTurns), Bins = a.OptionalInt("bins"),
        };
    }

    private static double Required(double? v, string key, RopeType type) => v ?? throw Missing(key, type);

    private static int Required(int? v, string key, RopeType type) => v ?? throw Missing(key, type);

    private static ModelFormatException Missing(string key, RopeType type) =>
        new($"config: rope_parameters.{key} is required for rope_type {type.ToString().ToLowerInvariant()}");

    /// <summary>key=value pairs of a --rope spec; every key must be consumed.</summary>
    private sealed class SpecArgs
    {
        private readonly string spec;
        private readonly Dictionary<string, string> values = new(StringComparer.OrdinalIgnoreCase);
        private readonly HashSet<string> used = new(StringComparer.OrdinalIgnoreCase);

        public SpecArgs(string spec, string text)
        {
            this.spec = spec;
            // A part without '=' continues the previous key's list: "dpe:w=128,g=2,8,16" gives g = "2,8,16".
            string? last = null;
            foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                int eq = part.IndexOf('=');
                if (eq < 0 && last is not null)
                {
                    values[last] += "," + part;
                    continue;
                }
                if (eq <= 0) throw new ArgumentException($"--rope {spec}: expected key=value, got '{part}'");
                last = part[..eq].Trim();
                values[last] = part[(eq + 1)..].Trim();
            }
        }

        public double? OptionalDouble(string key)
        {
            used.Add(key);
            if (!values.TryGetValue(key, out var v)) return null;
            if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) || !double.IsFinite(d))
                throw new ArgumentException($"--rope {spec}: {key}={v} is not a number");
            return d;
        }

        public double Double(string key, double fallback) => OptionalDouble(key) ?? fallback;

        public double[]? OptionalDoubleList(string key)
        {
            used.Add(key);
            if (!values.TryGetValue(key, out var v)) return null;
            return v.Split(',').Select(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && !double.IsNaN(d) ? d
                : throw new ArgumentException($"--rope {spec}: {key}={v}: '{p}' is not a number")).ToArray();
        }

        public int? OptionalInt(string key)
        {
            used.Add(key);
            if (!values.TryGetValue(key, out var v)) return null;
            if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i))
                throw new ArgumentException($"--rope {spec}: {key}={v} is not an integer");
            return i;
        }

        public int Int(string key, int fallback) => OptionalInt(key) ?? fallback;

        public void EnsureAllUsed()
        {
            var unknown = values.Keys.Where(k => !used.Contains(k)).ToArray();
            if (unknown.Length > 0) throw new ArgumentException($"--rope {spec}: unknown key(s) {string.Join(", ", unknown)}");
        }
    }
}

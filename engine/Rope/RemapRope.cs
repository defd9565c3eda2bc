// Index-remap methods (ROPE.md sections 2 and 6): the model's own frequencies, with keys beyond a window scored at
// grouped positions (RopeRemap), so that every relative position the model sees stays near its trained range.
// ReRoPE: distance clamped at w (group +inf), plus the log-n query scale. Leaky ReRoPE: slope 1/k beyond w (exact
// division). Self-Extend: group size G beyond the neighbour window W (floor division). DPE: a group size per group of
// rotary pairs. Examples (ROPE.md vectors): SelfExtend(g 2, w 4) puts key 0 at distance 7 from query 11;
// Dpe([4,4,2,16,32,32,16,128], w 1024) puts key 0 at [33535, 33535, 66047, 9151, 5087, 5087, 9151, 2039] from 131071.
using LlamaRun.Core;

namespace LlamaRun.Rope;

/// <summary>RoPE tables with an index remap: ReRoPE, Leaky ReRoPE, Self-Extend, DPE.</summary>
public static class RemapRope
{
    /// <summary>ReRoPE's window for a model trained at `trained` tokens: trained / 8 (512 for 4096, the reference's default).</summary>
    public static int DefaultReRopeWindow(int trained) => Math.Max(1, trained / 8);

    /// <summary>The neighbour window of Self-Extend, DPE and Leaky ReRoPE: a quarter of the trained length (1024 for 4096, as LongLM's default).</summary>
    public static int DefaultWindow(int trained) => Math.Max(1, trained / 4);

    /// <summary>Leaky ReRoPE's default: the farthest key is seen at 3/4 of the trained length (measured best, README).</summary>
    public const double DefaultFill = 0.75;

    /// <summary>Leaky ReRoPE's default log-n query scale context: half the trained length, so queries sharpen as
    /// max(1, ln(m+1)/ln(L/2)) (measured best for retrieval, README).</summary>
    public static double DefaultLogContext(int trained) => Math.Max(2, trained / 2.0);

    /// <summary>
    /// The smallest group size that keeps the largest grouped distance, W + (target - W) / G, within `fill` of the trained
    /// length (Self-Extend's rule of thumb: (1/2 .. 2/3) L > W + (N - W) / G; fill 1/2 by default).
    /// </summary>
    public static int DefaultGroup(int trained, int target, int window, double fill = 0.5)
    {
        if (!(fill > 0 && fill <= 1)) throw new ArgumentException($"fill={fill} must be in (0, 1]");
        double room = trained * fill - window;
        if (target <= window) return 1;
        if (room <= 0) throw new ArgumentException($"window {window} leaves no room below {fill:0.##} of the trained length {trained}: give g=N, a smaller w or a larger fill");
        return Math.Max(1, (int)Math.Ceiling((target - window) / room));
    }

    /// <summary>ReRoPE: every key at distance w or more is seen at distance w; logn adds q *= max(1, ln(m+1)/ln(trained)) on all layers.</summary>
    public static RopeTable ReRope(int rotaryDim, double theta, int trained, int window, bool logn)
    {
        CheckWindow(window);
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        return new RopeTable
        {
            Method = "rerope", InvFreq = inv, QueryScale = logn ? new QueryScale(trained, 0) : null,
            Remap = new RopeRemap("rerope", window, Filled(inv.Length, float.PositiveInfinity)),
        };
    }

    /// <summary>
    /// Leaky ReRoPE: distance d beyond w seen as w + (d - w) / k; k defaults to the slope that maps the target length onto
    /// `fill` of the trained length (1: all of it). logn: queries times max(1, ln(m+1)/ln(logContext)), logContext half
    /// the trained length unless given.
    /// </summary>
    public static RopeTable LeakyReRope(int rotaryDim, double theta, int trained, int target, int window, double? k, bool logn, double fill = 1,
        double? logContext = null)
    {
        double c = logContext ?? DefaultLogContext(trained);
        if (!(c > 1)) throw new ArgumentException($"leaky-rerope: logc={c} must be above 1");
        CheckWindow(window);
        if (!(fill > 0 && fill <= 1)) throw new ArgumentException($"leaky-rerope: fill={fill} must be in (0, 1]");
        if (k is null && window >= fill * trained) throw new ArgumentException($"leaky-rerope: window {window} leaves no room below {fill:0.##} of the trained length {trained}");
        double slope = k ?? Math.Max(1.0, (target - window) / (fill * trained - window));
        if (!(slope >= 1) || double.IsInfinity(slope)) throw new ArgumentException($"leaky-rerope: k={slope} must be a finite number of at least 1");
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        return new RopeTable
        {
            Method = "leaky-rerope", InvFreq = inv, Factor = slope, QueryScale = logn ? new QueryScale((float)c, 0) : null,
            Remap = new RopeRemap("leaky-rerope", window, Filled(inv.Length, (float)slope), floor: false),
        };
    }

    /// <summary>Self-Extend: keys at distance W or more at floor(p / G), queries at floor(i / G) + W - W / G; scaleBase adds the log-n query scale.</summary>
    public static RopeTable SelfExtend(int rotaryDim, double theta, int target, int group, int window, double? scaleBase = null)
    {
        CheckWindow(window);
        if (group < 1) throw new ArgumentException($"selfextend: g={group} must be at least 1");
        if (scaleBase is { } b && !(b > 1)) throw new ArgumentException($"selfextend: scale_base={b} must be above 1");
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        return new RopeTable
        {
            Method = "selfextend", InvFreq = inv, Factor = Math.Max(1.0, target / (window + (target - window) / (double)group)),
            QueryScale = scaleBase is { } c ? new QueryScale((float)c, 0) : null,
            Remap = new RopeRemap("selfextend", window, Filled(inv.Length, group)),
        };
    }

    /// <summary>DPE: the pairs split into groups.Length equal groups (pair order, fastest first), each with its own group size.</summary>
    public static RopeTable Dpe(int rotaryDim, double theta, int target, IReadOnlyList<double> groups, int window)
    {
        CheckWindow(window);
        var inv = RopeMath.DefaultInvFreq(rotaryDim, theta);
        if (groups.Count == 0 || inv.Length % groups.Count != 0)
            throw new ArgumentException($"dpe: {groups.Count} group sizes do not split the {inv.Length} rotary pairs evenly");
        var perPair = new float[inv.Length];
        int size = inv.Length / groups.Count;
        for (int g = 0; g < groups.Count; g++)
        {
            double v = groups[g];
            if (!(v >= 1) || double.IsInfinity(v) || v != Math.Floor(v)) throw new ArgumentException($"dpe: group size {v} must be a whole number of at least 1");
            perPair.AsSpan(g * size, size).Fill((float)v);
        }
        return new RopeTable
        {
            Method = "dpe", InvFreq = inv, Factor = Math.Max(1.0, target / (window + (target - window) / groups.Max())),
            Remap = new RopeRemap("dpe", window, perPair),
        };
    }

    private static void CheckWindow(int window)
    {
        if (window < 1) throw new ArgumentException($"remap window w={window} must be at least 1");
    }

    private static float[] Filled(int n, float value)
    {
        var a = new float[n];
        a.AsSpan().Fill(value);
        return a;
    }
}

// `rope-opt --plot FILE.svg`: angle distributions of chosen pairs (pre-trained vs extrapolated vs the selected
// table, like the DPRoPE paper's Figure 1) above the per-pair disturbance of each compared method (log scale).
// View with any browser, or render: rsvg-convert FILE.svg -o FILE.png
using System.Globalization;
using System.Text;
using LlamaRun.Rope;

namespace LlamaRun.RopeOpt;

/// <summary>Renders a Comparison as a self-contained SVG.</summary>
public static class SvgPlot
{
    private static readonly string[] Palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
    private const int Width = 1080, PanelH = 230, BottomH = 330, Margin = 60;

    /// <summary>The SVG text; pairs empty means three pairs picked around the trained length.</summary>
    public static string Render(Comparison c, IReadOnlyList<int> pairs)
    {
        var s = c.Setup;
        var plain = PlainRope.Default(s.RotaryDim, s.Theta).InvFreq;
        var chosen = pairs.Count > 0 ? pairs.Where(j => j < plain.Length).Take(4).ToList() : DefaultPairs(plain, s.PretrainedLength);
        int height = 70 + PanelH + 80 + BottomH + 60;
        var sb = new StringBuilder();
        sb.Append(F($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{height}\" viewBox=\"0 0 {Width} {height}\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n"));
        sb.Append(F($"<rect width=\"{Width}\" height=\"{height}\" fill=\"white\"/>\n"));
        sb.Append(F($"<text x=\"{Width / 2}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">RoPE angle distributions and disturbance: rotary dim {s.RotaryDim}, base {s.Theta:0.###}, {s.PretrainedLength} -> {s.TargetLength} tokens</text>\n"));
        sb.Append(F($"<text x=\"{Width / 2}\" y=\"44\" text-anchor=\"middle\" fill=\"#444\">share of positions per angle bin ({s.Bins} bins over [0, 2pi)); selected table: {Esc(c.SavedName)}</text>\n"));
        int n = chosen.Count, gap = 70;
        double pw = (Width - 2 * Margin - (n - 1) * gap) / (double)Math.Max(n, 1);
        for (int i = 0; i < n; i++)
            AnglePanel(sb, s, plain, c.Saved.InvFreq, chosen[i], Margin + i * (pw + gap), 70, pw, PanelH);
        Legend(sb, Margin, 70 + PanelH + 52, [("pre-trained, m < " + s.PretrainedLength, "#888888", true),
            ("extrapolated, m < " + s.TargetLength, "#d62728", false), (c.SavedName + ", m < " + s.TargetLength, "#1f77b4", false)]);
        DisturbancePanel(sb, c, plain, Margin, 70 + PanelH + 100, Width - 2 * Margin, BottomH - 50);
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static List<int> DefaultPairs(float[] plain, int trained)
    {
        int first = Array.FindIndex(plain, w => 2 * Math.PI / w > trained);
        if (first < 0) first = plain.Length - 1;
        var list = new List<int> { Math.Max(0, first - 2), first, plain.Length - 1 };
        return [.. list.Distinct()];
    }

    private static void AnglePanel(StringBuilder sb, DpropeSetup s, float[] plain, float[] selected, int j, double x, double y, double w, double h)
    {
        var pre = Share(Dprope.AngleCounts(plain[j], s.PretrainedLength, s.Bins), s.PretrainedLength);
        var ext = Share(Dprope.AngleCounts(plain[j], s.TargetLength, s.Bins), s.TargetLength);
        var sel = Share(Dprope.AngleCounts(selected[j], s.TargetLength, s.Bins), s.TargetLength);
        double ymax = Math.Max(pre.Max(), Math.Max(ext.Max(), sel.Max())) * 1.1;
        Axes(sb, x, y, w, h);
        // x ticks at multiples of pi/2, y ticks at 0, ymax/2, ymax.
        string[] labels = ["0", "pi/2", "pi", "3pi/2", "2pi"];
        for (int t = 0; t <= 4; t++)
        {
            double tx = x + w * t / 4;
            sb.Append(F($"<line x1=\"{tx:0.#}\" y1=\"{y + h:0.#}\" x2=\"{tx:0.#}\" y2=\"{y + h + 4:0.#}\" stroke=\"black\"/><text x=\"{tx:0.#}\" y=\"{y + h + 16:0.#}\" text-anchor=\"middle\">{labels[t]}</text>\n"));
        }
        for (int t = 0; t <= 2; t++)
        {
            double v = ymax * t / 2, ty = y + h - h * t / 2;
            sb.Append(F($"<text x=\"{x - 4:0.#}\" y=\"{ty + 4:0.#}\" text-anchor=\"end\" font-size=\"10\">{v * 100:0.##}%</text>\n"));
        }
        Step(sb, pre, x, y, w, h, ymax, "#888888", fill: true);
        Step(sb, ext, x, y, w, h, ymax, "#d62728", fill: false);
        Step(sb, sel, x, y, w, h, ymax, "#1f77b4", fill: false);
        double lambda = 2 * Math.PI / plain[j];
        sb.Append(F($"<text x=\"{x + w / 2:0.#}\" y=\"{y - 8:0.#}\" text-anchor=\"middle\" font-weight=\"bold\">pair {j}: wavelength {lambda:0.#} tokens, divisor {plain[j] / selected[j]:0.###}</text>\n"));
        sb.Append(F($"<text x=\"{x + w / 2:0.#}\" y=\"{y + h + 30:0.#}\" text-anchor=\"middle\" fill=\"#444\">angle (m * omega mod 2pi)</text>\n"));
    }

    private static void DisturbancePanel(StringBuilder sb, Comparison c, float[] plain, double x, double y, double w, double h)
    {
        double lo = 1e-5, hi = 2;
        foreach (var m in c.Methods) foreach (double d in m.Disturbance) if (d > 0) { lo = Math.Min(lo, d); hi = Math.Max(hi, d); }
        double l0 = Math.Floor(Math.Log10(lo)), l1 = Math.Ceiling(Math.Log10(hi));
        double Y(double d) => y + h - h * (Math.Log10(Math.Max(d, lo)) - l0) / (l1 - l0);
        int pairs = plain.Length;
        double X(int j) => x + w * (j + 0.5) / pairs;
        Axes(sb, x, y, w, h);
        for (double e = l0; e <= l1; e++)
        {
            double ty = Y(Math.Pow(10, e));
            sb.Append(F($"<line x1=\"{x:0.#}\" y1=\"{ty:0.#}\" x2=\"{x + w:0.#}\" y2=\"{ty:0.#}\" stroke=\"#e5e5e5\"/><text x=\"{x - 4:0.#}\" y=\"{ty + 4:0.#}\" text-anchor=\"end\" font-size=\"10\">1e{e:0}</text>\n"));
        }
        int step = pairs <= 32 ? 2 : pairs <= 64 ? 4 : 8;
        for (int j = 0; j < pairs; j += step)
            sb.Append(F($"<text x=\"{X(j):0.#}\" y=\"{y + h + 16:0.#}\" text-anchor=\"middle\" font-size=\"10\">{j}</text>\n"));
        int first = Array.FindIndex(plain, wv => 2 * Math.PI / wv > c.Setup.PretrainedLength);
        if (first >= 0)
            sb.Append(F($"<line x1=\"{X(first) - w / pairs / 2:0.#}\" y1=\"{y:0.#}\" x2=\"{X(first) - w / pairs / 2:0.#}\" y2=\"{y + h:0.#}\" stroke=\"#555\" stroke-dasharray=\"5,4\"/><text x=\"{X(first) - w / pairs / 2 + 4:0.#}\" y=\"{y + 14:0.#}\" fill=\"#555\">wavelength &gt; {c.Setup.PretrainedLength} from here</text>\n"));
        var legend = new List<(string, string, bool)>();
        for (int i = 0; i < c.Methods.Count; i++)
        {
            var m = c.Methods[i];
            string color = Palette[i % Palette.Length];
            var pts = string.Join(" ", m.Disturbance.Select((d, j) => F($"{X(j):0.#},{Y(d):0.#}")));
            sb.Append(F($"<polyline points=\"{pts}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\"/>\n"));
            for (int j = 0; j < pairs; j++) sb.Append(F($"<circle cx=\"{X(j):0.#}\" cy=\"{Y(m.Disturbance[j]):0.#}\" r=\"2.4\" fill=\"{color}\"/>"));
            sb.Append('\n');
            legend.Add((F($"{m.Name} (mean {m.Mean * 1e3:0.00}e-3, {m.Table.InterpolatedPairs} interp.)"), color, false));
        }
        sb.Append(F($"<text x=\"{x + w / 2:0.#}\" y=\"{y - 10:0.#}\" text-anchor=\"middle\" font-weight=\"bold\">per-pair disturbance sum_k p ln(p/q) against the pre-trained angles (log scale)</text>\n"));
        sb.Append(F($"<text x=\"{x + w / 2:0.#}\" y=\"{y + h + 32:0.#}\" text-anchor=\"middle\" fill=\"#444\">pair j (higher j = lower frequency)</text>\n"));
        sb.Append(F($"<text transform=\"translate({x - 44:0.#},{y + h / 2:0.#}) rotate(-90)\" text-anchor=\"middle\" fill=\"#444\">disturbance</text>\n"));
        Legend(sb, x, y + h + 48, legend);
    }

    private static double[] Share(int[] counts, int length) => [.. counts.Select(k => k / (double)length)];

    private static void Step(StringBuilder sb, double[] v, double x, double y, double w, double h, double ymax, string color, bool fill)
    {
        var p = new StringBuilder();
        p.Append(F($"M{x:0.##},{y + h:0.##}"));
        for (int k = 0; k < v.Length; k++)
        {
            double vy = y + h - h * v[k] / ymax;
            p.Append(F($" L{x + w * k / v.Length:0.##},{vy:0.##} L{x + w * (k + 1) / v.Length:0.##},{vy:0.##}"));
        }
        p.Append(F($" L{x + w:0.##},{y + h:0.##}"));
        sb.Append(fill
            ? F($"<path d=\"{p}Z\" fill=\"{color}\" fill-opacity=\"0.35\" stroke=\"none\"/>\n")
            : F($"<path d=\"{p}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\"/>\n"));
    }

    private static void Axes(StringBuilder sb, double x, double y, double w, double h) =>
        sb.Append(F($"<rect x=\"{x:0.#}\" y=\"{y:0.#}\" width=\"{w:0.#}\" height=\"{h:0.#}\" fill=\"none\" stroke=\"black\"/>\n"));

    private static void Legend(StringBuilder sb, double x, double y, IReadOnlyList<(string Label, string Color, bool Fill)> items)
    {
        double cx = x;
        foreach (var (label, color, fill) in items)
        {
            double width = 36 + 6.6 * label.Length;
            if (cx > x && cx + width > Width - 10) { cx = x; y += 18; } // wrap to the next row
            sb.Append(fill
                ? F($"<rect x=\"{cx:0.#}\" y=\"{y - 9:0.#}\" width=\"18\" height=\"10\" fill=\"{color}\" fill-opacity=\"0.35\"/>")
                : F($"<line x1=\"{cx:0.#}\" y1=\"{y - 4:0.#}\" x2=\"{cx + 18:0.#}\" y2=\"{y - 4:0.#}\" stroke=\"{color}\" stroke-width=\"2.5\"/>"));
            sb.Append(F($"<text x=\"{cx + 24:0.#}\" y=\"{y:0.#}\">{Esc(label)}</text>\n"));
            cx += width;
        }
    }

    private static string Esc(string t) => t.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");

    private static string F(FormattableString f) => f.ToString(CultureInfo.InvariantCulture);
}

// What `perplexity --sweep` and `passkey --sweep` share: the RoPE of one methods x lengths cell ("default" is the
// default the session's backend would pick at that length) and the table as markdown or JSON.
using System.Globalization;
using System.Text;
using LlamaRun.Core;

namespace LlamaRun.Cli.Commands;

internal static class SweepTable
{
    /// <summary>The schedule (and its stderr note) of sweep entry `method` at ctx tokens.</summary>
    public static (RopeSchedule Rope, string Note) Rope(ModelSession s, int ctx, string method) =>
        ModelSession.ChooseRope(s.Config, ctx, method == "default" ? null : method, null, s.Backend.Capabilities.FastIndexRemap);

    /// <summary>| method | ctx ... | rows, each cell written by format.</summary>
    public static string Markdown(string[] methods, int[] ctxs, double[,] cells, Func<double, string> format)
    {
        var sb = new StringBuilder("| method |");
        foreach (int c in ctxs) sb.Append(CultureInfo.InvariantCulture, $" {c} |");
        sb.Append("\n|---|").Append(string.Concat(Enumerable.Repeat("---:|", ctxs.Length)));
        for (int m = 0; m < methods.Length; m++)
        {
            sb.Append(CultureInfo.InvariantCulture, $"\n| {methods[m]} |");
            for (int c = 0; c < ctxs.Length; c++) sb.Append(' ').Append(format(cells[m, c])).Append(" |");
        }
        return sb.ToString();
    }

    /// <summary>{head"key":{"method":{"ctx":value,...},...}}, head being leading members such as "\"samples\":50,".</summary>
    public static string Json(string key, string[] methods, int[] ctxs, double[,] cells, string head = "")
    {
        var sb = new StringBuilder("{").Append(head).Append('"').Append(key).Append("\":{");
        for (int m = 0; m < methods.Length; m++)
        {
            if (m > 0) sb.Append(',');
            sb.Append('"').Append(methods[m].Replace("\\", "\\\\").Replace("\"", "\\\"")).Append("\":{");
            for (int c = 0; c < ctxs.Length; c++)
                sb.Append(CultureInfo.InvariantCulture, $"{(c > 0 ? "," : "")}\"{ctxs[c]}\":{cells[m, c]:R}");
            sb.Append('}');
        }
        return sb.Append("}}").ToString();
    }
}

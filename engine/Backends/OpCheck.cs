// Runs one op case on two backends (a reference, usually CPU, and a candidate, usually CUDA) over OpCases and compares:
// NMSE (sum of squared errors over sum of squared reference values: scale-free, like test-backend-ops), max abs error,
// NaN/Inf parity, first mismatches, and guard rows after every output left untouched. Used by GpuOpsTests and
// `llama-run check`.
using System.Text;
using LlamaRun.Backends.Ops;
using LlamaRun.Core;

namespace LlamaRun.Backends;

/// <summary>Outcome of one case: NMSE and max abs error of candidate against reference, and whether it passed.</summary>
public sealed record OpCheckResult(string Op, string Shape, double Nmse, double MaxAbs, bool Pass, string Detail);

/// <summary>Compares the ops of two backends on the shared case table.</summary>
public static class OpCheck
{
    /// <summary>Runs every case, in table order; FullPrecision cases run on fullPrecision when given (the candidate otherwise).</summary>
    public static IEnumerable<OpCheckResult> RunAll(IBackend reference, IBackend candidate, IBackend? fullPrecision = null) =>
        OpCases.All.Select(c => Run(reference, c.FullPrecision && fullPrecision is not null ? fullPrecision : candidate, c));

    /// <summary>Runs one case on both backends with the same seeded inputs and compares the outputs.</summary>
    public static OpCheckResult Run(IBackend reference, IBackend candidate, OpCase c)
    {
        var (expected, refGuard) = Execute(reference, c);
        var (actual, candGuard) = Execute(candidate, c);
        var detail = new StringBuilder(refGuard + candGuard);
        bool pass = detail.Length == 0;
        double nmse = 0, maxAbs = 0;
        for (int o = 0; o < expected.Count; o++)
        {
            var (n, m, ok, why) = Compare(expected[o].Data, actual[o].Data, c.MaxNmse);
            nmse = Math.Max(nmse, n);
            maxAbs = Math.Max(maxAbs, m);
            if (!ok)
            {
                pass = false;
                detail.Append($"{expected[o].Name}: {why} ");
            }
        }
        return new OpCheckResult(c.Op, c.Name, nmse, maxAbs, pass, detail.ToString().Trim());
    }

    // Prepares the case on one backend, launches it once and reads every output and the guard rows back.
    private static (List<(string Name, float[] Data)> Outputs, string Guards) Execute(IBackend backend, OpCase c)
    {
        using var scope = new OpScope(backend, c.Name);
        var op = c.Prepare(scope);
        op.Run();
        var outputs = op.Outputs.Select(o => (o.Name, o.Read())).ToList();
        return (outputs, scope.CheckGuards());
    }

    /// <summary>NMSE with NaN/Inf parity; argmax-style integer outputs (maxNmse 0) must match exactly.</summary>
    private static (double Nmse, double MaxAbs, bool Ok, string Why) Compare(float[] expected, float[] actual, double maxNmse)
    {
        double err = 0, norm = 0, maxAbs = 0;
        var bad = new List<string>();
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            bool special = !float.IsFinite(e) || !float.IsFinite(a);
            if (special)
            {
                bool same = (float.IsNaN(e) && float.IsNaN(a)) || e == a;
                if (!same && bad.Count < 5) bad.Add($"[{i}] expected {e} got {a}");
                if (!same) err = double.PositiveInfinity;
                continue;
            }
            double d = (double)a - e;
            err += d * d;
            norm += (double)e * e;
            maxAbs = Math.Max(maxAbs, Math.Abs(d));
            if (Math.Abs(d) > 1e-2 * (1 + Math.Abs(e)) && bad.Count < 5) bad.Add($"[{i}] expected {e} got {a}");
        }
        double nmse = norm > 0 ? err / norm : err;
        bool ok = double.IsFinite(nmse) && (maxNmse == 0 ? err == 0 : nmse <= maxNmse);
        return (nmse, maxAbs, ok, ok ? "" : $"nmse {nmse:E2} (bound {maxNmse:E0}), max abs {maxAbs:E2}; {string.Join("; ", bad)}");
    }
}

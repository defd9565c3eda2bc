// `llama-run bench --kernels [--device D] [--op NAME]`: times the hot kernels of a backend on the cases of OpCases.Kernels (decode
// GEMV on the Llama-2-7B projections, prefill GEMM, RMSNorm, rotary, decode attention at 4k and 16k, causal flash
// attention), with the rates that judge them: GB/s (the bytes each must move) and TFLOP/s. Inputs rotate through
// enough copies to exceed a GPU's L2 cache, so each launch reads memory; OpTiming gives the median of 7 batches.
using System.Globalization;
using LlamaRun.Backends.Ops;
using LlamaRun.Core;

namespace LlamaRun.Cli.Commands;

public static class KernelBench
{
    /// <summary>Times every kernel case, or those of one op (--op rope, as test-backend-ops -o).</summary>
    public static int Run(IBackend g, string? op = null)
    {
        var cases = OpCases.Kernels.Where(c => op is null || c.Op == op).ToList();
        if (cases.Count == 0)
            throw new UsageException($"--op {op}: no kernel case of that op (ops: {string.Join(", ", OpCases.Kernels.Select(c => c.Op).Distinct())})");
        Console.WriteLine($"# kernels on {g.Device}");
        Console.WriteLine("| kernel | case | time | GB/s | TFLOP/s |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        foreach (var c in cases)
        {
            using var scope = new OpScope(g, c.Name);
            double s = OpTiming.Seconds(g, c.Prepare(scope, OpTiming.ColdCopies(c, g.KvElementSize)));
            string flops = c.Flops > 0 ? (c.Flops / s / 1e12).ToString("F1", CultureInfo.InvariantCulture) : "-";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {c.Op} | {c.Name[(c.Op.Length + 1)..]} | {s * 1e6:F1} us | {c.Bytes(g.KvElementSize) / s / 1e9:F0} | {flops} |"));
        }
        return 0;
    }
}

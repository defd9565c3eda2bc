// `llama-run bench --kernels [--device D]`: times the hot kernels of a backend on the cases of OpCases.Kernels (decode
// GEMV on the Llama-2-7B projections, prefill GEMM, RMSNorm, rotary, decode attention at 4k and 16k, causal flash
// attention), with the rates that judge them: GB/s (the bytes each must move) and TFLOP/s. Inputs rotate through
// enough copies to exceed a GPU's L2 cache, so each launch reads memory; OpTiming gives the median of 7 batches.
using System.Globalization;
using LlamaRun.Backends.Ops;
using LlamaRun.Core;

namespace LlamaRun.Cli.Commands;

public static class KernelBench
{
    public static int Run(IBackend g)
    {
        Console.WriteLine($"# kernels on {g.Device}");
        Console.WriteLine("| kernel | case | time | GB/s | TFLOP/s |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        foreach (var c in OpCases.Kernels)
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

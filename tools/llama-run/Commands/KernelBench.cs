// `llama-run bench --kernels [--device D]`: times the hot kernels of a backend on Llama shapes, with the rates that
// judge them: decode GEMV and RMSNorm, rotary and decode attention in GB/s (bytes each must move, over HBM bandwidth),
// prefill GEMM and causal flash attention in TFLOP/s. GEMV weights rotate through 4 copies so each launch reads from
// memory, not from the L2 cache. Every figure is the mean of N launches queued back to back, then one synchronize.
using System.Diagnostics;
using System.Globalization;
using LlamaRun.Core;

namespace LlamaRun.Cli.Commands;

public static class KernelBench
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(IBackend g)
    {
        Console.WriteLine($"# kernels on {g.Device}");
        Console.WriteLine("| kernel | shape | time | rate |");
        Console.WriteLine("|---|---|---:|---:|");
        void Row(string k, string shape, double s, string rate) => Console.WriteLine(string.Create(Inv, $"| {k} | {shape} | {s * 1e6:F1} us | {rate} |"));
        foreach (var (outDim, inDim) in new[] { (4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (32000, 4096) })
        {
            var ws = Enumerable.Range(0, 4).Select(i => Random(g, DType.BF16, outDim, inDim, i)).ToArray();
            using var x = Random(g, DType.F32, 1, inDim, 9);
            using var y = g.Alloc(DType.F32, 1, outDim);
            double s = Time(g, 200, i => g.MatMul(x, ws[i & 3], y));
            Row("gemv bf16", $"1x{inDim} * {outDim}x{inDim}", s, string.Create(Inv, $"{2.0 * outDim * inDim / s / 1e9:F0} GB/s"));
            foreach (var w in ws) w.Dispose();
        }
        foreach (var (m, outDim, inDim) in new[] { (512, 4096, 4096), (4096, 11008, 4096), (16384, 4096, 4096) })
        {
            using var w = Random(g, DType.BF16, outDim, inDim, 1);
            using var x = Random(g, DType.F32, m, inDim, 2);
            using var y = g.Alloc(DType.F32, m, outDim);
            double s = Time(g, 10, _ => g.MatMul(x, w, y));
            Row("gemm bf16", $"{m}x{inDim} * {outDim}x{inDim}", s, string.Create(Inv, $"{2.0 * m * outDim * inDim / s / 1e12:F1} TFLOP/s"));
        }
        using (var r = g.Alloc(DType.F32, 16384, 4096))
        using (var wn = g.Alloc(DType.F32, 1, 4096))
        {
            double s = Time(g, 20, _ => g.RmsNorm(r, wn, r, 1e-5f));
            Row("rmsnorm", "16384x4096", s, string.Create(Inv, $"{8.0 * 16384 * 4096 / s / 1e9:F0} GB/s"));
        }
        var table = new RopeTable { Method = "bench", InvFreq = [.. Enumerable.Range(0, 64).Select(j => MathF.Pow(500000f, -j / 64f))] };
        foreach (var (heads, kv, ctx) in new[] { (32, 32, 16384), (32, 8, 4096), (32, 8, 16384), (64, 8, 16384) })
        {
            using var cache = g.AllocKvCache(1, ctx, kv, 128);
            using var q = Random(g, DType.F32, 1, heads * 128, 3);
            using var o = g.Alloc(DType.F32, 1, heads * 128);
            double s = Time(g, 50, _ => g.Attention(q, cache, 0, ctx - 1, o));
            Row("attention decode", $"heads {heads}/{kv} hd 128 ctx {ctx}", s, string.Create(Inv, $"{2.0 * ctx * kv * 128 * g.KvElementSize / s / 1e9:F0} GB/s"));
        }
        foreach (var (t, hd) in new[] { (4096, 128), (16384, 128), (16384, 64) })
        {
            int heads = 32, kv = 8;
            using var cache = g.AllocKvCache(1, t, kv, hd);
            using var q = Random(g, DType.F32, t, heads * hd, 4);
            using var k = Random(g, DType.F32, t, kv * hd, 5);
            using var v = Random(g, DType.F32, t, kv * hd, 6);
            using var o = g.Alloc(DType.F32, t, heads * hd);
            var rope = hd == 128 ? table : new RopeTable { Method = "bench", InvFreq = table.InvFreq[..32] };
            double sr = Time(g, 10, _ => g.Rope(q, k, v, cache, 0, 0, rope));
            long ropeBytes = (long)t * ((heads + kv) * hd * 8L + kv * hd * 4L + 2L * kv * hd * g.KvElementSize);
            Row("rope", $"T {t} heads {heads}/{kv} hd {hd}", sr, string.Create(Inv, $"{ropeBytes / sr / 1e9:F0} GB/s"));
            double s = Time(g, t > 4096 ? 3 : 5, _ => g.Attention(q, cache, 0, 0, o));
            Row("attention prefill", $"T {t} heads {heads}/{kv} hd {hd} causal", s, string.Create(Inv, $"{4.0 * t * (t + 1) / 2 * heads * hd / s / 1e12:F1} TFLOP/s"));
        }
        return 0;
    }

    private static unsafe Tensor Random(IBackend b, DType dt, int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        long n = (long)rows * cols;
        var host = new ushort[dt == DType.F32 ? n * 2 : n];
        fixed (ushort* h = host)
        {
            for (long i = 0; i < n; i++)
            {
                float v = (float)(rng.NextDouble() * 2 - 1);
                if (dt == DType.F32) ((float*)h)[i] = v;
                else h[i] = DTypes.F32ToBF16(v);
            }
            return b.Upload(dt, rows, cols, (nint)h);
        }
    }

    // Seconds per call: one warm-up call, then iters calls queued back to back and one synchronize.
    private static double Time(IBackend b, int iters, Action<int> body)
    {
        body(0);
        b.Synchronize();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < iters; i++) body(i);
        b.Synchronize();
        return sw.Elapsed.TotalSeconds / iters;
    }
}

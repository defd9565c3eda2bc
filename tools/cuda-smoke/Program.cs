// cuda-smoke: runs every OpCheck case CPU vs CUDA, then times the main kernels (GB/s, TFLOP/s) on the GPU.
// Usage: cuda-smoke [check|bench|all|selfcheck] (default all). Exit code 1 when a case fails or CUDA is unavailable.
using System.Diagnostics;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Cuda;
using LlamaRun.Model;
using LlamaRun.Rope;

string mode = args.Length > 0 ? args[0] : "all";
if (mode == "selfcheck")
{
    // CPU against itself: validates the harness (inputs, guards, comparisons) without a GPU.
    using var a = new CpuBackend();
    var bad = OpCheck.RunAll(a, a).Where(r => !r.Pass).ToList();
    foreach (var r in bad) Console.WriteLine($"FAIL {r.Shape} {r.Detail}");
    Console.WriteLine($"selfcheck: {OpCheckCases.All.Count - bad.Count}/{OpCheckCases.All.Count} pass");
    return bad.Count == 0 ? 0 : 1;
}
using var cuda = CudaBackend.TryCreate(out string reason);
if (cuda is null)
{
    Console.WriteLine($"CUDA unavailable: {reason}");
    return 1;
}
Console.WriteLine($"device: {cuda.Device}");
int failures = 0;
if (mode is "check" or "all")
{
    using var cpu = new CpuBackend();
    using var full = new CudaBackend(fullPrecision: true);
    foreach (var c in OpCheckCases.All)
    {
        var sw = Stopwatch.StartNew();
        OpCheckResult r;
        try { r = OpCheck.Run(cpu, c.FullPrecision ? full : cuda, c); }
        catch (Exception e) { r = new OpCheckResult(c.Op.ToString(), c.Name, double.NaN, double.NaN, false, e.GetType().Name + ": " + e.Message); }
        if (!r.Pass) failures++;
        Console.WriteLine($"{(r.Pass ? "ok  " : "FAIL")} {r.Shape,-90} nmse {r.Nmse,9:E2} maxabs {r.MaxAbs,9:E2} {sw.ElapsedMilliseconds,6} ms {r.Detail}");
    }
    Console.WriteLine($"{OpCheckCases.All.Count - failures}/{OpCheckCases.All.Count} cases pass");
}
if (mode is "bench" or "all") Bench(cuda);
return failures == 0 ? 0 : 1;

static unsafe Tensor Random(IBackend b, DType dt, int rows, int cols, int seed)
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

static double Time(IBackend b, int iters, Action<int> body)
{
    body(0);
    b.Synchronize();
    var sw = Stopwatch.StartNew();
    for (int i = 0; i < iters; i++) body(i);
    b.Synchronize();
    return sw.Elapsed.TotalSeconds / iters;
}

static void Bench(CudaBackend g)
{
    Console.WriteLine("| kernel | shape | time | rate |");
    Console.WriteLine("|---|---|---:|---:|");
    void Row(string k, string shape, double s, string rate) => Console.WriteLine($"| {k} | {shape} | {s * 1e6:F1} us | {rate} |");
    // GEMV: 4 distinct weights (> L2) rotated so every launch streams from HBM.
    foreach (var (outDim, inDim) in new[] { (4096, 4096), (11008, 4096), (4096, 11008), (16384, 8192), (32000, 4096) })
    {
        var ws = Enumerable.Range(0, 4).Select(i => Random(g, DType.BF16, outDim, inDim, i)).ToArray();
        using var x = Random(g, DType.F32, 1, inDim, 9);
        using var y = g.Alloc(DType.F32, 1, outDim);
        double s = Time(g, 200, i => g.MatMul(x, ws[i & 3], y));
        Row("gemv bf16", $"1x{inDim} * {outDim}x{inDim}", s, $"{2.0 * outDim * inDim / s / 1e9:F0} GB/s");
        foreach (var w in ws) w.Dispose();
    }
    foreach (var (m, outDim, inDim) in new[] { (512, 4096, 4096), (4096, 4096, 4096), (4096, 11008, 4096), (16384, 4096, 4096) })
    {
        using var w = Random(g, DType.BF16, outDim, inDim, 1);
        using var x = Random(g, DType.F32, m, inDim, 2);
        using var y = g.Alloc(DType.F32, m, outDim);
        double s = Time(g, 10, _ => g.MatMul(x, w, y));
        Row("gemm bf16", $"{m}x{inDim} * {outDim}x{inDim}", s, $"{2.0 * m * outDim * inDim / s / 1e12:F1} TFLOP/s");
    }
    {
        int n = 64 << 20;
        using var a = g.Alloc(DType.F32, 1, n);
        using var bb = g.Alloc(DType.F32, 1, n);
        double s = Time(g, 20, _ => g.Add(a, bb, a));
        Row("add", $"{n}", s, $"{12.0 * n / s / 1e9:F0} GB/s");
        using var r = g.Alloc(DType.F32, 16384, 4096);
        using var wn = g.Alloc(DType.F32, 1, 4096);
        s = Time(g, 20, _ => g.RmsNorm(r, wn, r, 1e-5f));
        Row("rmsnorm", "16384x4096", s, $"{8.0 * 16384 * 4096 / s / 1e9:F0} GB/s");
    }
    var table = new RopeTable { Method = "bench", InvFreq = [.. Enumerable.Range(0, 64).Select(j => MathF.Pow(500000f, -j / 64f))] };
    foreach (var (heads, kv, ctx) in new[] { (32, 8, 4096), (32, 8, 16384), (32, 32, 16384) })
    {
        using var cache = g.AllocKvCache(1, ctx, kv, 128);
        using var q = Random(g, DType.F32, 1, heads * 128, 3);
        using var o = g.Alloc(DType.F32, 1, heads * 128);
        double s = Time(g, 50, _ => g.Attention(q, cache, 0, ctx - 1, o));
        Row("attention decode", $"heads {heads}/{kv} hd 128 ctx {ctx}", s, $"{2.0 * 2 * ctx * kv * 128 / s / 1e9:F0} GB/s");
    }
    foreach (int t in new[] { 512, 4096, 16384 })
    {
        using var cache = g.AllocKvCache(1, t, 8, 128);
        using var q = Random(g, DType.F32, t, 32 * 128, 4);
        using var k = Random(g, DType.F32, t, 8 * 128, 5);
        using var v = Random(g, DType.F32, t, 8 * 128, 6);
        using var o = g.Alloc(DType.F32, t, 32 * 128);
        double sr = Time(g, 10, _ => g.Rope(q, k, v, cache, 0, 0, table));
        Row("rope", $"T {t} heads 32/8 hd 128", sr, $"{(t * (32 + 8 + 8) * 128 * 8.0 + t * 16 * 128 * 2.0) / sr / 1e9:F0} GB/s");
        double s = Time(g, t > 4096 ? 2 : 5, _ => g.Attention(q, cache, 0, 0, o));
        Row("attention prefill", $"T {t} heads 32/8 hd 128 causal", s, $"{4.0 * t * t / 2 * 32 * 128 / s / 1e12:F2} TFLOP/s");
    }
}

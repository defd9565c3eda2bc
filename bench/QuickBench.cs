// `Bench --quick [--device cpu|cuda] [--no-generate] [--profile]`: a fast markdown report without BenchmarkDotNet:
// read bandwidth on 1 and all threads, a few ops in GB/s, and stories110M decode tokens/s against the bandwidth bound.
using System.Diagnostics;
using System.Globalization;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Ops;
using LlamaRun.MakeCheckpoint;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.Bench;

/// <summary>The quick report.</summary>
public static class QuickBench
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(string device, bool generate, bool profile)
    {
        Console.WriteLine($"## llama-run quick bench ({RuntimeInfo()})\n");
        int threads = CpuReadBandwidth.PoolThreads;
        double bw1 = CpuReadBandwidth.Measure(1), bwAll = CpuReadBandwidth.Measure(0);
        Console.WriteLine("| memory read (1 GiB sum, best of 8) | GB/s |\n|---|---:|");
        Console.WriteLine(string.Create(Inv, $"| 1 thread | {bw1:F1} |\n| {threads} threads | {bwAll:F1} |\n"));

        using (var backend = BackendFactory.Create(device))
        {
            Console.WriteLine($"| op on {backend.Name} | µs | GB/s | GFLOP/s |\n|---|---:|---:|---:|");
            foreach (var c in QuickCases())
            {
                using var scope = new OpScope(backend, c.Name);
                double us = OpTiming.Seconds(backend, c.Prepare(scope)) * 1e6;
                string flops = c.Flops > 0 ? (c.Flops / us / 1e3).ToString("F1", Inv) : "-";
                Console.WriteLine(string.Create(Inv, $"| {c} | {us:F1} | {c.Bytes(backend.KvElementSize) / us / 1e3:F1} | {flops} |"));
            }
            Console.WriteLine();
        }
        if (generate) Decode(device, bwAll, profile);
        return 0;
    }

    private static IEnumerable<OpCase> QuickCases()
    {
        var table = OpCases.CpuBenchmarks().ToList();
        T Find<T>(Func<T, bool> f) where T : OpCase => table.OfType<T>().First(f);
        yield return Find<RmsNormCase>(c => c.T == 1 && c.N == 4096);
        foreach (var dt in new[] { DType.F32, DType.F16, DType.BF16 })
            yield return Find<MatMulCase>(c => c.Weight == dt && c.T == 1 && c.N == 4096 && c.Out == 4096);
        yield return Find<MatMulCase>(c => c.T == 1 && c.N == 768 && c.Out == 32000);
        yield return Find<MatMulCase>(c => c.T == 1 && c.N == 4096 && c.Out == 32000);
        yield return Find<RopeCase>(c => c.T == 1 && c.HeadDim == 128);
        yield return Find<AttentionCase>(c => c.T == 1 && c.StartPos == 1024);
        yield return Find<AttentionCase>(c => c.T == 1 && c.StartPos == 511 && c.HeadDim == 64);
        yield return Find<SwiGluCase>(c => c.N == 11008 * 4);
        yield return Find<ArgmaxCase>(c => c.N == 32000);
    }

    private static void Decode(string device, double readGBps, bool profile)
    {
        var preset = CheckpointPresets.Get("stories110m");
        var sw = Stopwatch.StartNew();
        string dir = CheckpointPresets.EnsureWritten(preset, CheckpointPresets.DefaultCacheRoot());
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var backend = BackendFactory.Create(device);
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, 256, RopeMethods.FromConfig(config));
        Console.Error.WriteLine($"{dir}: ready in {sw.Elapsed.TotalSeconds:F1} s");
        var logits = new float[config.VocabSize];
        const int tokens = 64;
        var rates = new List<double>();
        for (int rep = 0; rep < 6; rep++)
        {
            model.Reset();
            int token = 1;
            long t0 = Stopwatch.GetTimestamp();
            for (int pos = 0; pos < tokens; pos++)
            {
                model.Forward([token], pos, LogitsRows.Last, logits);
                token = LlamaRun.Backends.Cpu.CpuOps.Argmax(logits);
            }
            if (rep > 0) rates.Add(tokens / Stopwatch.GetElapsedTime(t0).TotalSeconds);   // the first repetition warms up
        }
        double mean = rates.Average(), sd = Math.Sqrt(rates.Sum(r => (r - mean) * (r - mean)) / Math.Max(1, rates.Count - 1));
        long bytes = weights.DecodeReadBytes;
        double bound = readGBps * 1e9 / bytes;
        Console.WriteLine("| model | backend | test | tokens/s | bound tokens/s | % of bound |\n|---|---|---|---:|---:|---:|");
        Console.WriteLine(string.Create(Inv,
            $"| stories110m bf16 ({bytes / 1e6:F0} MB/token) | {backend.Device} | tg{tokens} | {mean:F1} ± {sd:F1} | {bound:F0} | {100 * mean / bound:F0}% |"));
        if (device != "cpu") Console.WriteLine("(the bound uses the host read bandwidth; on a GPU compare with its memory bandwidth instead)");
        if (profile) Profile(device, dir, config, tokens, mean);
    }

    // The same decode with every op timed on its own (synchronized): where a token's time goes, and each GEMV's GB/s.
    private static void Profile(string device, string dir, LlamaConfig config, int tokens, double tokensPerSecond)
    {
        var p = new ProfileBackend(BackendFactory.Create(device));
        using var backend = p;
        using var weights = LlamaWeights.Load(dir, config, backend);
        using var model = Llama.Create(config, weights, backend, 256, RopeMethods.FromConfig(config));
        var logits = new float[config.VocabSize];
        for (int rep = 0; rep < 2; rep++)
        {
            p.Clear();   // the first repetition warms up
            model.Reset();
            int token = 1;
            for (int pos = 0; pos < tokens; pos++)
            {
                model.Forward([token], pos, LogitsRows.Last, logits);
                token = LlamaRun.Backends.Cpu.CpuOps.Argmax(logits);
            }
        }
        Console.WriteLine();
        Console.Write(p.Table(tokens, FormattableString.Invariant($"decode op (unprofiled {1e3 / tokensPerSecond:F2} ms/token)")));
    }

    private static string RuntimeInfo() =>
        $".NET {Environment.Version}, {Environment.ProcessorCount} CPUs, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}";
}

// `llama-run bench [-m DIR] [--device D] [-p 512,4096,16384] [-n 128] [--depth 16384] [-r 3]`: llama-bench style table of
// prefill (ppP: P random tokens from position 0) and decode (tgN after an empty cache; tgN @ dD after filling D positions)
// tokens/s, mean ± stdev over r repetitions, plus load time and memory. Tests that do not fit in memory are skipped.
// Each decode row also shows the bytes a token reads (weights plus the cached K and V it attends over), the read
// bandwidth of the memory they live in (host memory on the CPU, device memory by a pure-read kernel on a GPU; measured
// just before each repetition, since other machines' load moves it; the mean of those) and the % of the bound: the
// mean over repetitions of tokens/s * bytes a token / that repetition's bandwidth.
using System.Diagnostics;
using System.Globalization;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.Cli.Commands;

public static class Bench
{
    public const string Usage = "llama-run bench [-m DIR | --shape NAME] [--tp N] [--device D] [-p 512,4096,16384] [-n 128] [--depth 16384] [-r 3] [--rope SPEC] [--compute mixed|f32|bf16] [--kv bf16|f32] [-b N] [--profile] | llama-run bench --kernels [--device D] [--op NAME]";

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    private sealed record Test(string Name, int Prompt, int Depth, int Decode)
    {
        public int Positions => Prompt > 0 ? Prompt : Depth + Decode;
    }

    public static int Run(Args args)
    {
        if (args.Has("--kernels"))
        {
            string kernelDevice = args.String("--device") ?? "cuda";
            string? op = args.String("--op");
            args.RejectUnknown();
            using var b = BackendFactory.Create(kernelDevice);
            return KernelBench.Run(b, op);
        }
        int[] prompts = args.String("-p") is { } p ? ParseLengths(p) : [512, 4096, 16384];
        int decode = args.Int("-n", 128, min: 0);
        int depth = args.Int("--depth", 16384, min: 0);
        if ((long)depth + decode > int.MaxValue / 2) throw new UsageException($"--depth {depth} with -n {decode} is too long");
        int reps = args.Int("-r", 3, min: 1);
        string device = args.String("--device") ?? "auto";
        // --shape NAME: a well-known shape alone (its config.json in a temporary directory, random weights).
        string? shape = args.String("--shape");
        if (shape is not null && args.String("-m", "--model") is not null) throw new UsageException("give -m DIR or --shape NAME, not both");
        DirectoryInfo? shapeDir = null;
        try
        {
            string dir;
            if (shape is not null)
            {
                LlamaConfig preset;
                try { preset = LlamaShapes.Get(shape); }
                catch (ArgumentException e) { throw new UsageException($"--shape: {e.Message}"); }
                shapeDir = Directory.CreateTempSubdirectory("llama-run-shape-");
                CheckpointWriter.WriteConfig(Path.Combine(shapeDir.FullName, "config.json"), preset);
                dir = shapeDir.FullName;
            }
            else
            {
                dir = ModelSession.ModelDirectory(args);
            }
            return Run(args, prompts, decode, depth, reps, device, dir, shape);
        }
        finally
        {
            shapeDir?.Delete(recursive: true);
        }
    }

    private static int Run(Args args, int[] prompts, int decode, int depth, int reps, string device, string dir, string? shape)
    {
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        string model = shape ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir)));
        // A directory with a config.json alone (or --shape): random bf16 weights generated on the host, for speed only.
        bool random = !ModelSession.HasWeightFiles(dir);
        if (random) Console.Error.WriteLine($"{model}: no safetensors files: random bf16 weights (seed {ModelSession.RandomSeed}), timing only");

        var tests = prompts.Select(p => new Test($"pp{p}", p, 0, 0)).ToList();
        if (decode > 0)
        {
            tests.Add(new Test($"tg{decode}", 0, 0, decode));
            if (depth > 0) tests.Add(new Test($"tg{decode} @ d{depth}", 0, depth, decode));
        }
        if (tests.Count == 0) throw new UsageException("nothing to run: give -p and/or -n");
        int tp = args.Int("--tp", 0, min: 1);
        if (tp > 0) return RunTensorParallel(args, config, dir, model, tests, reps, decode, device, tp);

        // Keep only the tests whose KV cache fits next to the weights, then size the context for the longest of them.
        long weightFiles = random ? new RandomWeights(config, DType.BF16, ModelSession.RandomSeed).TotalBytes
            : Directory.EnumerateFiles(dir, "*.safetensors").Sum(f => new FileInfo(f).Length);
        var (compute, fullPrecision) = ModelSession.ComputeType(args.String("--compute"));
        // The far-branch kernels when the RoPE of the longest test remaps positions (an index-remap --rope or default).
        // (Without --rope, the checkpoint's own RoPE at every length, as llama-bench: the default past the trained length
        // is a quality choice, timed by giving it as --rope.)
        bool remap = (args.String("--rope") ?? args.String("--rope-table")) is not null
            && ModelSession.Remaps(config, tests.Max(t => t.Positions), args.String("--rope"), args.String("--rope-table"), ModelSession.FastRemapDevice(device));
        var load = Stopwatch.StartNew();
        IBackend backend = ModelSession.CreateBackend(device, config, compute, fullPrecision,
            ModelSession.KvCacheType(args.String("--kv")), remap);   // the session takes it over
        if (args.Has("--profile")) return Profile(args, backend, decode, depth, dir);
        double backendSeconds = load.Elapsed.TotalSeconds;
        long freeBefore = backend.FreeMemoryBytes;
        int kvElement = backend.KvElementSize;
        bool cpu = !backend.Capabilities.DeviceMemory;   // weights and KV cache in host memory: the host read bound applies
        long budget = freeBefore > 0 ? (long)(0.9 * (freeBefore - weightFiles)) : long.MaxValue;
        var skipped = tests.Where(t => Llama.KvCacheBytes(config, t.Positions, kvElement, remap) > budget).ToList();
        foreach (var t in skipped)
            Console.Error.WriteLine(string.Create(Inv,
                $"skipping {t.Name}: {t.Positions} positions need {Llama.KvCacheBytes(config, t.Positions, kvElement, remap) / 1e9:F2} GB of KV cache, {Math.Max(0, budget) / 1e9:F2} GB available"));
        tests = tests.Except(skipped).ToList();
        if (tests.Count == 0)
        {
            backend.Dispose();
            throw new UsageException("no test fits in memory");
        }
        int ctx = tests.Max(t => t.Positions);

        using var s = ModelSession.Open(args, ctx, needTokenizer: false, backend: backend, checkpointRope: true, modelDir: dir, randomWeights: true);
        args.RejectUnknown();
        double loadSeconds = load.Elapsed.TotalSeconds;
        if (s.RopeNote.Length > 0) Console.Error.WriteLine(s.RopeNote);
        long deviceUsed = s.Backend.Capabilities.DeviceMemory ? freeBefore - s.Backend.FreeMemoryBytes : 0;

        // The read bound of decode: host memory on the CPU, device memory by a pure-read kernel on a GPU (a quarter of
        // what the model left free, at most 1 GiB).
        long probeBytes = Math.Min(1L << 30, s.Backend.FreeMemoryBytes / 4) / 4096 * 4096;
        using IReadProbe? bandwidth = cpu ? new CpuReadBandwidth.Probe()
            : s.Backend is GpuBackend g && probeBytes >= 64 << 20 ? g.CreateReadProbe(probeBytes) : null;
        var runner = new Runner(s.Model);
        double Bytes(Test t) => DecodeBytes(t, s.Weights.DecodeReadBytes, s.Config.NumHiddenLayers * s.Config.KvDim, s.Backend.KvElementSize);
        var results = Measure(tests, runner, reps, decode, ctx, bandwidth, Bytes);
        PrintTable(results, model, FormatBytes(s.Weights.WeightBytes), FormatCount(ParameterCount(config)), s.Backend.Name, bandwidth is not null, Bytes);
        long kv = Llama.KvCacheBytes(config, ctx, s.Backend.KvElementSize);
        Console.WriteLine();
        string kernels = s.Backend is GpuBackend gpu
            ? string.Create(Inv, $" (backend {backendSeconds:F2} s; {gpu.Kernels.Count} kernels compiled and loaded in {gpu.KernelLoadSeconds:F2} s beside the weights, {gpu.KernelWaitSeconds:F2} s of it waited for);"
                + $" decode steps {gpu.DecodeStepMode} ({gpu.DecodeStepReplays} replayed, programmatic launch {gpu.ProgrammaticMode}), fused q/k/v+rope {(gpu.Capabilities.FusedRope ? "on" : "off")}, fused gate/up+SwiGlu {(gpu.Capabilities.FusedDecode ? "on" : "off")}, fused add+norm {(gpu.Capabilities.FusedNorm ? "on" : "off")}")
            : "";
        Console.WriteLine(string.Create(Inv, $"device: {s.Backend.Device}; ctx {ctx}; load {loadSeconds:F2} s{kernels}"));
        Console.WriteLine($"memory: weights {FormatBytes(s.Weights.WeightBytes)} + KV cache {FormatBytes(kv)} = {FormatBytes(s.Weights.WeightBytes + kv)}" +
                          (deviceUsed > 0 ? $"; device memory used (free before load - free after) {FormatBytes(deviceUsed)}" : ""));
        if (bandwidth is not null)
            Console.WriteLine($"read GB/s: {bandwidth.Description}, best of 8 passes before each repetition (mean shown); % of bound: mean over repetitions");
        return 0;
    }

    // `--profile`: decode steps with every op timed on its own (synchronized), at depth 0 and at --depth: where a token's
    // time goes, and the GB/s each op reads.
    private static int Profile(Args args, IBackend backend, int decode, int depth, string dir)
    {
        var p = new ProfileBackend(backend);
        int tokens = Math.Clamp(decode, 1, 32);
        using var s = ModelSession.Open(args, depth + 2 * tokens, needTokenizer: false, backend: p, checkpointRope: true, modelDir: dir, randomWeights: true);
        args.RejectUnknown();
        var runner = new Runner(s.Model);
        runner.Decode(0, tokens);   // warm-up
        foreach (int d in depth > 0 ? new[] { 0, depth } : [0])
        {
            if (d > 0) runner.Fill(d);
            p.Clear();
            runner.Decode(d, tokens);
            Console.WriteLine();
            Console.Write(p.Table(tokens, $"decode at depth {d}"));
        }
        Console.WriteLine($"\ndevice: {s.Backend.Device}");
        return 0;
    }

    // --tp N: the model as N tensor-parallel ranks (GPUs 0 .. N-1 through NCCL, or CPU backends through the in-process
    // communicator), each loading only its slices; the read bound is the sum of the ranks' (each GPU reads its own
    // memory), the bytes a token reads every rank's weights and KV rows.
    private static int RunTensorParallel(Args args, LlamaConfig config, string dir, string model, List<Test> tests, int reps, int decode,
        string device, int tp)
    {
        if (args.Has("--profile")) throw new UsageException("--profile times one backend: leave out --tp");
        if ((args.String("--rope") ?? args.String("--rope-table")) is not null) throw new UsageException("--tp runs the checkpoint's own RoPE: leave out --rope");
        var (compute, fullPrecision) = ModelSession.ComputeType(args.String("--compute"));
        device = RankGroup.ResolveDevice(device);
        int ctx = tests.Max(t => t.Positions);
        var load = Stopwatch.StartNew();
        var kernels = GpuKernelSet.For(config.HeadDim, config.NumAttentionHeads / config.NumKeyValueHeads, compute == DType.BF16);
        var kv = BackendFactory.CpuKvCache(fullPrecision, ModelSession.KvCacheType(args.String("--kv")));
        using var ranks = RankGroup.Open(config, tp, device, fullPrecision, kernels, kv);
        var backends = ranks.Backends;
        var comm = ranks.Communicator;
        args.RejectUnknown();
        var rope = RopeMethods.FromConfig(config);
        var progress = new LoadProgress(tp);
        using var group = TensorParallelLlama.Create(config, backends, comm, _ => ModelSession.WeightSource(config, dir), ctx, rope,
            maxBatch: Math.Min(ctx, backends[0].Capabilities.PrefillChunk), activations: compute, progress: progress.Report);
        progress.Finish();
        double loadSeconds = load.Elapsed.TotalSeconds;

        // The read bound: the host's memory for CPU ranks (they share it), the sum of every GPU's own.
        var probes = new List<IReadProbe>();
        if (device == "cpu") probes.Add(new CpuReadBandwidth.Probe());
        else
            foreach (var g in backends.Cast<GpuBackend>())
            {
                long probeBytes = Math.Min(1L << 30, g.FreeMemoryBytes / 4) / 4096 * 4096;
                if (probeBytes >= 64 << 20) probes.Add(g.CreateReadProbe(probeBytes));
            }
        using var bandwidth = probes.Count == 0 ? null : new SummedProbe(probes);
        long kvRow = group.Ranks.Sum(m => (long)m.Config.NumHiddenLayers * m.Config.KvDim);
        double Bytes(Test t) => DecodeBytes(t, group.DecodeReadBytes, kvRow, backends[0].KvElementSize);
        var results = Measure(tests, new Runner(group), reps, decode, ctx, bandwidth, Bytes);
        PrintTable(results, model, FormatBytes(group.WeightBytes), FormatCount(ParameterCount(config)), $"{device} x{tp}", bandwidth is not null, Bytes);
        Console.WriteLine();
        for (int r = 0; r < tp; r++) Console.WriteLine($"rank {r}: {backends[r].Device}");
        Console.WriteLine(string.Create(Inv, $"ctx {ctx}; load {loadSeconds:F2} s; collectives: {(comm is NcclCommunicator ? $"NCCL ({NcclCommunicator.Library})" : "in-process")}"));
        if (bandwidth is not null)
            Console.WriteLine(device == "cpu" ? $"read GB/s: {bandwidth.Description} (host memory, which the ranks share)"
                : $"read GB/s: the sum over the GPUs of {bandwidth.Description}");
        return 0;
    }

    // Several ranks' read probes as one bound: each measured in turn, summed.
    private sealed class SummedProbe(List<IReadProbe> probes) : IReadProbe
    {
        public double Measure(int passes = 8) => probes.Sum(p => p.Measure(passes));

        public string Description => probes[0].Description + (probes.Count > 1 ? $" ({probes.Count} probes)" : "");

        public void Dispose()
        {
            foreach (var p in probes) p.Dispose();
        }
    }

    private sealed record Result(Test Test, double Mean, double Sd, double Read, double Bound);

    // Warms up (JIT of the one-token paths too, until tiered compilation has optimized them; first touch of the weights;
    // kernel compilation), then times every test reps times, measuring the read bandwidth before each decode repetition.
    private static List<Result> Measure(List<Test> tests, Runner runner, int reps, int decode, int ctx, IReadProbe? bandwidth, Func<Test, double> bytesOf)
    {
        runner.Prefill(Math.Min(16, ctx));
        if (decode > 0) runner.WarmUpDecode(Math.Min(64, ctx), seconds: 1.5);
        var results = new List<Result>();
        foreach (var t in tests)
        {
            var rates = new double[reps];
            if (t.Depth > 0)
            {
                var fill = Stopwatch.StartNew();
                runner.Fill(t.Depth);
                Console.Error.WriteLine(string.Create(Inv, $"filled {t.Depth} positions in {fill.Elapsed.TotalSeconds:F1} s"));
            }
            var reads = new double[reps];
            for (int r = 0; r < reps; r++)
            {
                if (bandwidth is not null && t.Decode > 0) reads[r] = bandwidth.Measure();
                rates[r] = t.Prompt > 0 ? runner.Prefill(t.Prompt) : runner.Decode(t.Depth, t.Decode);
            }
            double mean = rates.Average();
            double sd = reps > 1 ? Math.Sqrt(rates.Sum(x => (x - mean) * (x - mean)) / (reps - 1)) : 0;
            double bytes = bandwidth is not null && t.Decode > 0 ? bytesOf(t) : 0;
            double bound = bytes > 0 ? Enumerable.Range(0, reps).Average(r => rates[r] * bytes / (reads[r] * 1e9)) : 0;
            results.Add(new Result(t, mean, sd, reads.Average(), bound));
        }
        return results;
    }

    private static void PrintTable(List<Result> results, string model, string size, string parameters, string backend, bool bounded, Func<Test, double> bytesOf)
    {
        Console.WriteLine("| model | size | params | backend | test | t/s |" + (bounded ? " bytes/token | read GB/s | bound t/s | % of bound |" : ""));
        Console.WriteLine("| --- | ---: | ---: | --- | ---: | ---: |" + (bounded ? " ---: | ---: | ---: | ---: |" : ""));
        foreach (var (t, mean, sd, read, bound) in results)
        {
            string row = string.Create(Inv, $"| {model} | {size} | {parameters} | {backend} | {t.Name} | {mean:F2} ± {sd:F2} |");
            if (bound > 0)
            {
                double bytes = bytesOf(t);
                row += string.Create(Inv, $" {bytes / 1e6:F0} MB | {read:F1} | {read * 1e9 / bytes:F1} | {100 * bound:F0}% |");
            }
            else if (bounded) row += " - | - | - | - |";
            Console.WriteLine(row);
        }
    }

    /// <summary>Times forward passes of random tokens on one model (or one tensor-parallel group).</summary>
    private sealed class Runner(ILanguageModel model)
    {
        private readonly float[] _logits = new float[model.VocabSize];
        private readonly Random _rng = new(1234);

        private int[] RandomTokens(int n) => [.. Enumerable.Range(0, n).Select(_ => _rng.Next(model.VocabSize))];

        public double Prefill(int n)
        {
            var tokens = RandomTokens(n);
            model.Reset();
            long t0 = Stopwatch.GetTimestamp();
            model.Forward(tokens, 0, LogitsRows.Last, _logits);
            return n / Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }

        public void Fill(int depth)
        {
            model.Reset();
            model.Forward(RandomTokens(depth), 0, LogitsRows.None, default);
        }

        // Decodes for `seconds` (at least two tokens), from an empty cache again whenever `positions` are filled.
        public void WarmUpDecode(int positions, double seconds)
        {
            int token = _rng.Next(model.VocabSize);
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < 2 || Stopwatch.GetElapsedTime(t0).TotalSeconds < seconds; i++)
            {
                if (i % positions == 0) model.Reset();
                model.Forward([token], i % positions, LogitsRows.Last, _logits);
                token = CpuOps.Argmax(_logits);
            }
        }

        // Greedy decode of n tokens at positions start.. (the cache holds positions 0..start-1); each token waits for its logits.
        public double Decode(int start, int n)
        {
            if (start == 0) model.Reset();
            int token = _rng.Next(model.VocabSize);
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < n; i++)
            {
                model.Forward([token], start + i, LogitsRows.Last, _logits);
                token = CpuOps.Argmax(_logits);
            }
            return n / Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
    }

    // Bytes a decode token of test t reads: the weights, and K and V of every layer at the positions it attends over
    // (depth + (n + 1) / 2 on average for n tokens after depth cached positions); kvRowElements: K (or V) elements of one
    // position over all layers (and ranks).
    private static double DecodeBytes(Test t, long weightBytes, long kvRowElements, int kvElementSize)
    {
        double positions = t.Depth + (t.Decode + 1) / 2.0;
        return weightBytes + 2.0 * kvRowElements * kvElementSize * positions;
    }

    // "512,4096" or "0" (no prefill test), as llama-bench takes -p.
    private static int[] ParseLengths(string s) =>
        [.. s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x =>
            int.TryParse(x, NumberStyles.Integer, Inv, out int v) && v >= 0 && v <= int.MaxValue / 2 ? v
                : throw new UsageException($"-p expects prompt lengths separated by commas, got '{x}'")).Where(v => v > 0)];

    private static long ParameterCount(LlamaConfig c)
    {
        long h = c.HiddenSize;
        long layer = h * c.QDim * 2 + 2 * h * c.KvDim + 3 * h * c.IntermediateSize + 2 * h;
        return c.NumHiddenLayers * layer + (long)c.VocabSize * h * (c.TieWordEmbeddings ? 1 : 2) + h;
    }

    private static string FormatBytes(long b) => b >= 1L << 30
        ? string.Create(Inv, $"{b / (double)(1L << 30):F2} GiB")
        : string.Create(Inv, $"{b / (double)(1L << 20):F2} MiB");

    private static string FormatCount(long n) => n >= 1_000_000_000
        ? string.Create(Inv, $"{n / 1e9:F2} B")
        : string.Create(Inv, $"{n / 1e6:F2} M");
}

// End-to-end speed of a stories110M-shaped random bf16 checkpoint (written once by make-checkpoint's presets into
// $LLAMA_BENCH_CACHE or TEMP/llama-run-bench): decode (tg128) and prefill (pp512) tokens/s, and decode as a fraction
// of the weight-read bound. Run: Bench --filter '*GenerateBenchmarks*'.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.MakeCheckpoint;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.Bench;

/// <summary>tg128 and pp512 of a random checkpoint on one backend.</summary>
public class GenerateBenchmarks
{
    public const int DecodeTokens = 128, PrefillTokens = 512;
    private const double HbmSpecBytesPerSecond = 3.35e12;   // H100 SXM HBM3 spec, the bound used on CUDA
    private static readonly Dictionary<string, double> Bounds = [];
    private IBackend? _backend;
    private LlamaWeights? _weights;
    private Llama? _model;
    private float[] _logits = [];
    private int[] _prompt = [];

    [Params("stories110m")]
    public string Preset { get; set; } = "stories110m";

    /// <summary>"cpu", or "cuda" when LLAMA_BENCH_DEVICE=cuda.</summary>
    public static IEnumerable<string> Devices => [Environment.GetEnvironmentVariable("LLAMA_BENCH_DEVICE") ?? "cpu"];

    [ParamsSource(nameof(Devices))]
    public string Device { get; set; } = "cpu";

    [GlobalSetup]
    public void Setup()
    {
        var preset = CheckpointPresets.Get(Preset);
        string dir = CheckpointPresets.EnsureWritten(preset, CheckpointPresets.DefaultCacheRoot());
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        // Bandwidth first, while the model's memory is not yet resident and nothing else runs.
        double bytesPerSecond = Device == "cpu" ? CpuReadBandwidth.Measure(0) * 1e9 : HbmSpecBytesPerSecond;
        _backend = BackendFactory.Create(Device);
        _weights = LlamaWeights.Load(dir, config, _backend);
        Bounds[Key(Preset, Device)] = bytesPerSecond / _weights.DecodeReadBytes;
        _model = Llama.Create(config, _weights, _backend, DecodeTokens + PrefillTokens, RopeMethods.FromConfig(config));
        _logits = new float[config.VocabSize];
        _prompt = [.. Enumerable.Range(0, PrefillTokens).Select(i => (int)((i * 7919L + 1) % config.VocabSize))];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _model?.Dispose();
        _weights?.Dispose();
        _backend?.Dispose();
    }

    /// <summary>Decode tokens/s bound for this case: read bandwidth (measured on CPU, spec on CUDA) / bytes of weights per token.</summary>
    public static double? BoundFor(BenchmarkCase c)
    {
        string? preset = c.Parameters[nameof(Preset)] as string, device = c.Parameters[nameof(Device)] as string;
        return preset is not null && device is not null && Bounds.TryGetValue(Key(preset, device), out double b) ? b : null;
    }

    private static string Key(string preset, string device) => preset + "/" + device;

    /// <summary>tg128: 128 greedy tokens one at a time after an empty cache.</summary>
    [Benchmark(OperationsPerInvoke = DecodeTokens), TokenOperation]
    public int Decode()
    {
        var m = _model!;
        m.Reset();
        int token = 1;
        for (int pos = 0; pos < DecodeTokens; pos++)
        {
            m.Forward([token], pos, LogitsRows.Last, _logits);
            token = LlamaRun.Backends.Cpu.CpuOps.Argmax(_logits);
        }
        return token;
    }

    /// <summary>pp512: 512 tokens in one forward pass from position 0.</summary>
    [Benchmark(OperationsPerInvoke = PrefillTokens), TokenOperation]
    public float Prefill()
    {
        _model!.Reset();
        _model.Forward(_prompt, 0, LogitsRows.Last, _logits);
        return _logits[0];
    }
}

// GPU kernels through IBackend (the ILGPU CUDA backend): RMSNorm, rotary, decode GEMV (GB/s against HBM) and causal attention
// prefill at 4k and 16k (TFLOP/s). Launches are queued N times, then one synchronize (OperationsPerInvoke = N).
// Run: Bench --filter '*KernelBenchmarks*' (skipped with a message when there is no CUDA device).
using BenchmarkDotNet.Attributes;
using LlamaRun.Core;
using LlamaRun.Backends;

namespace LlamaRun.Bench;

/// <summary>Per-kernel timings on the CUDA backend.</summary>
public class KernelBenchmarks
{
    private const int Launches = 20;
    private const long ColdBytes = 256L << 20;   // input sets rotated through when ColdL2 is on: 5x the 50 MB L2 of an H100
    private IBackend? _backend;
    private OpRunner? _runner;

    public static IEnumerable<BenchCase> Cases => BenchCases.Kernels(kvElementSize: 2);

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = null!;

    /// <summary>
    /// Defeats the L2 cache: each launch reads the next of several copies of its inputs, together well over L2 size,
    /// so a weight read comes from HBM even when it would fit in L2 (as llm.c's L2 flush between launches, without the flush time).
    /// </summary>
    [Params(false, true)]
    public bool ColdL2 { get; set; }

    /// <summary>Why the kernels cannot run here, or null when a CUDA device is usable.</summary>
    public static string? Unavailable()
    {
        try
        {
            using var b = BackendFactory.Create("cuda");
            return null;
        }
        catch (ArgumentException e) { return e.Message; }
    }

    [GlobalSetup]
    public void Setup()
    {
        _backend = BackendFactory.Create("cuda");
        int copies = ColdL2 ? (int)Math.Clamp(ColdBytes / Math.Max(1, Case.Bytes), 1, 64) : 1;
        _runner = new OpRunner(_backend, Case.Op, copies);
        _runner.Run();
        _backend.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _runner?.Dispose();
        _backend?.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Launches)]
    public void Kernel()
    {
        for (int i = 0; i < Launches; i++) _runner!.Run();
        _backend!.Synchronize();
    }
}

// GPU kernels through IBackend (the ILGPU CUDA backend) on OpCases.Kernels, the cases `llama-run bench --kernels` times:
// decode GEMV, RMSNorm, rotary and decode attention (GB/s against HBM), prefill GEMM and causal attention (TFLOP/s).
// Launches are queued N times, then one synchronize (OperationsPerInvoke = N).
// Run: Bench --filter '*KernelBenchmarks*' (skipped with a message when there is no CUDA device).
using BenchmarkDotNet.Attributes;
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Ops;

namespace LlamaRun.Bench;

/// <summary>Per-kernel timings on the CUDA backend.</summary>
public class KernelBenchmarks
{
    private const int Launches = 20;
    private IBackend? _backend;
    private OpScope? _scope;
    private PreparedOp? _op;
    private int _launch;

    public static IEnumerable<BenchCase> Cases => OpCases.Kernels.Select(c => new BenchCase(c, KvElementSize: 2));

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
        int copies = ColdL2 ? OpTiming.ColdCopies(Case.Op, Case.KvElementSize) : 1;
        _scope = new OpScope(_backend, Case.Op.Name);
        _op = Case.Op.Prepare(_scope, copies);
        _op.Run(_launch++);
        _backend.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _scope?.Dispose();
        _backend?.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Launches)]
    public void Kernel()
    {
        for (int i = 0; i < Launches; i++) _op!.Run(_launch++);
        _backend!.Synchronize();
    }
}

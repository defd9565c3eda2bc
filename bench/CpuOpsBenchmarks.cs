// The CPU ops (embedding, rmsnorm, matmul f32/f16/bf16, rope, attention, rerotate, swiglu, add, argmax) on the shared
// shape table, with GB/s and TFLOP/s columns. Run: Bench --filter '*CpuOps*' [--anyCategories ...].
using BenchmarkDotNet.Attributes;
using LlamaRun.Backends.Cpu;

namespace LlamaRun.Bench;

/// <summary>One CPU op per case, through CpuBackend (shape checks included, as the forward pass calls it).</summary>
public class CpuOpsBenchmarks
{
    private CpuBackend? _backend;
    private OpRunner? _runner;

    public static IEnumerable<BenchCase> Cases => BenchCases.Cpu();

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = null!;

    [GlobalSetup]
    public void Setup()
    {
        _backend = new CpuBackend();
        _runner = new OpRunner(_backend, Case.Op);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _runner?.Dispose();
        _backend?.Dispose();
    }

    [Benchmark]
    public void Op() => _runner!.Run();
}

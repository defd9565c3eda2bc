// The CPU ops (embedding, rmsnorm, matmul f32/f16/bf16, rope, attention, rerotate, swiglu, add, argmax) on the shared
// shape table, with GB/s and TFLOP/s columns. Run: Bench --filter '*CpuOps*' [--anyCategories ...].
using BenchmarkDotNet.Attributes;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Ops;

namespace LlamaRun.Bench;

/// <summary>One CPU op per case, through CpuBackend (shape checks included, as the forward pass calls it).</summary>
public class CpuOpsBenchmarks
{
    private CpuBackend? _backend;
    private OpScope? _scope;
    private PreparedOp? _op;
    private int _launch;

    public static IEnumerable<BenchCase> Cases => OpCases.CpuBenchmarks().Select(c => new BenchCase(c, KvElementSize: 4));

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = null!;

    [GlobalSetup]
    public void Setup()
    {
        _backend = new CpuBackend();
        _scope = new OpScope(_backend, Case.Op.Name);
        _op = Case.Op.Prepare(_scope);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _scope?.Dispose();
        _backend?.Dispose();
    }

    [Benchmark]
    public void Op() => _op!.Run(_launch++);
}

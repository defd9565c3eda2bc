// One op at one shape as a case object (the idea of test-backend-ops' test cases): its name and shape, tolerance,
// the bytes and FLOPs it must move and do, and how to set it up and run it on a backend. OpCheck compares two backends
// on it; `llama-run bench --kernels`, `Bench --quick` and the BenchmarkDotNet classes time it.
// Adding an op: its kernel (kernels/X.cs), its CPU op (Cpu/CpuOps.X.cs), the IBackend method, one case class here
// (Ops/X.cs) and its lines in OpCases. Test: GpuOpsTests, OpCaseTests.
using System.Globalization;
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

/// <summary>One op at one shape: Source names the model the shape comes from, MaxNmse is the check's bound (0: exact).</summary>
public abstract record OpCase(string Source, double MaxNmse)
{
    /// <summary>The op's name, as its kernel and CPU op are named ("matmul", "rope").</summary>
    public abstract string Op { get; }

    /// <summary>The shape and parameters, readable ("T=1 in=4096 out=4096").</summary>
    protected abstract string Shape { get; }

    /// <summary>Compute type of the op (inputs are then rounded to it too); for Round, the target type.</summary>
    public DType Compute { get; init; } = DType.F32;

    /// <summary>Run on the candidate's full-precision mode (f32 KV cache, exact f32 matmuls): must match the CPU to f32 rounding.</summary>
    public bool FullPrecision { get; init; }

    /// <summary>Inject NaN (and where meaningful +Inf) into the inputs to check special-value parity.</summary>
    public bool Specials { get; init; }

    /// <summary>Unique, readable name: the test case id and the benchmark row.</summary>
    public string Name => $"{Op} {Shape}" + (Compute != DType.F32 ? $" compute={Compute.Name().ToLowerInvariant()}" : "")
        + (FullPrecision ? " full-f32" : "") + (Specials ? " nan/inf" : "") + $" ({Source})";

    /// <summary>Bytes read plus bytes written, every input and output once (weights at their dtype, activations F32).</summary>
    public abstract long Bytes(int kvElementSize);

    /// <summary>Floating-point operations, 2 per multiply-add (0 where an op is judged by bytes alone).</summary>
    public virtual double Flops => 0;

    /// <summary>A rough count of the op's work, which decides the cases ILGPU's slow CPU accelerator runs.</summary>
    public abstract long Work { get; }

    /// <summary>
    /// Allocates and fills the inputs on s.Backend (seeded, so identical on every backend) and returns the op, ready to
    /// queue. copies > 1 makes that many input sets, so successive launches read memory rather than cache.
    /// </summary>
    public abstract PreparedOp Prepare(OpScope s, int copies = 1);

    public sealed override string ToString() => Name;

    protected static string F(double v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>NaN at element 3, and +Inf at element 5 when withInf, of a case's main input (clamped to its length).</summary>
    protected static void InjectSpecials(float[] x, bool withInf)
    {
        x[Math.Min(3, x.Length - 1)] = float.NaN;
        if (withInf) x[Math.Min(5, x.Length - 1)] = float.PositiveInfinity;
    }

    /// <summary>At least one input set made by make, copies of them when asked; launch i uses set i mod their count.</summary>
    protected static T[] Sets<T>(int copies, Func<T> make) => [.. Enumerable.Range(0, Math.Max(1, copies)).Select(_ => make())];
}

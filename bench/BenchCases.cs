// A BenchmarkDotNet parameter: one op case of engine/Backends/Ops/OpCases.cs with the KV element size of the backend
// that runs it, so the GB/s and FLOP/s columns (BenchConfig) know the bytes the case moves and the FLOPs it does.
using LlamaRun.Backends.Ops;

namespace LlamaRun.Bench;

/// <summary>One benchmarked op case, with the bytes it must move and the FLOPs it performs.</summary>
public sealed record BenchCase(OpCase Op, int KvElementSize)
{
    public long Bytes => Op.Bytes(KvElementSize);
    public double Flops => Op.Flops;

    public override string ToString() => Op.Name.Replace(" (", " [").Replace(")", "]");
}

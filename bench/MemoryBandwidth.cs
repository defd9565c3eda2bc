// STREAM-style read bandwidth as a BenchmarkDotNet benchmark: CpuReadBandwidth's 1 GiB sum on 1 thread and on all
// threads of the CPU backend's worker pool. Run: Bench --filter '*MemoryBandwidth*' (--quick reports it too).
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using LlamaRun.Backends.Cpu;

namespace LlamaRun.Bench;

/// <summary>Host memory read bandwidth, as the decode GEMVs see it.</summary>
public unsafe class MemoryBandwidth
{
    private float* _buffer;

    /// <summary>Threads summing the buffer: 1, or 0 for all threads of the CPU backend's pool.</summary>
    [Params(1, 0)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup() => _buffer = CpuReadBandwidth.AllocFilled(CpuReadBandwidth.BufferBytes);

    [GlobalCleanup]
    public void Cleanup() => NativeMemory.AlignedFree(_buffer);

    [Benchmark, BytesPerOperation(CpuReadBandwidth.BufferBytes)]
    public float Read() => CpuReadBandwidth.Sum(_buffer, CpuReadBandwidth.BufferBytes, Threads);
}

// STREAM-style read bandwidth: sums a 1 GiB float buffer with Vector512 (or Vector256) loads on 1 thread and on all
// threads of the CPU backend's worker pool. Run: Bench --filter '*MemoryBandwidth*' (or --quick).
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using BenchmarkDotNet.Attributes;
using LlamaRun.Backends.Cpu;

namespace LlamaRun.Bench;

/// <summary>Host memory read bandwidth, as the decode GEMVs see it.</summary>
public unsafe class MemoryBandwidth
{
    public const long BufferBytes = 1L << 30;
    private const int Chunks = 64;   // work items handed to the pool: 16 MiB each, so the threads finish together
    private float* _buffer;

    /// <summary>Threads summing the buffer: 1, or 0 for all threads of the CPU backend's pool.</summary>
    [Params(1, 0)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup() => _buffer = AllocFilled();

    [GlobalCleanup]
    public void Cleanup() => NativeMemory.AlignedFree(_buffer);

    [Benchmark, BytesPerOperation(BufferBytes)]
    public float Read() => Sum(_buffer, Threads);

    /// <summary>Threads of the CPU backend's pool (LLAMA_THREADS or the processor count).</summary>
    public static int PoolThreads => CpuParallel.Threads;

    /// <summary>Best read GB/s over several passes of the 1 GiB buffer (STREAM reports the best pass too).</summary>
    public static double Measure(int threads, int passes = 8)
    {
        float* p = AllocFilled();
        try
        {
            Sum(p, threads);   // warm up the pool and the code
            double best = double.MaxValue;
            for (int i = 0; i < passes; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Sum(p, threads);
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return BufferBytes / best / 1e9;
        }
        finally { NativeMemory.AlignedFree(p); }
    }

    private static float* AllocFilled()
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)BufferBytes, 4096);
        new Span<float>(p, (int)(BufferBytes / 8)).Fill(1f);   // touch every page so no page fault is timed
        new Span<float>(p + BufferBytes / 8, (int)(BufferBytes / 8)).Fill(1f);
        return p;
    }

    /// <summary>Sum of the buffer on 1 thread, or on the pool when threads is 0 (or above 1).</summary>
    public static float Sum(float* p, int threads)
    {
        long n = BufferBytes / sizeof(float), per = n / Chunks;
        if (threads == 1) return SumRange(p, n);
        var partial = new float[Chunks];
        CpuParallel.For(Chunks, i => partial[i] = SumRange(p + i * per, per));
        float s = 0;
        foreach (float x in partial) s += x;
        return s;
    }

    // Four independent accumulators keep enough loads in flight that the loop is bound by memory, not by add latency.
    private static float SumRange(float* p, long n)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i + 64 <= n; i += 64)
            {
                a0 += Vector512.Load(p + i);
                a1 += Vector512.Load(p + i + 16);
                a2 += Vector512.Load(p + i + 32);
                a3 += Vector512.Load(p + i + 48);
            }
            return Vector512.Sum(a0 + a1 + a2 + a3) + Tail(p, i, n);
        }
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        for (; i + 32 <= n; i += 32)
        {
            b0 += Vector256.Load(p + i);
            b1 += Vector256.Load(p + i + 8);
            b2 += Vector256.Load(p + i + 16);
            b3 += Vector256.Load(p + i + 24);
        }
        return Vector256.Sum(b0 + b1 + b2 + b3) + Tail(p, i, n);
    }

    private static float Tail(float* p, long i, long n)
    {
        float s = 0;
        for (; i < n; i++) s += p[i];
        return s;
    }
}

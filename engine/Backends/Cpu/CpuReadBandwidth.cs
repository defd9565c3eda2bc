// STREAM-style host read bandwidth: sums a 1 GiB float buffer with Vector512 (or Vector256) loads on 1 thread or on
// all threads of the CPU worker pool; the bound that CPU decode is measured against (llama-run bench, bench --quick).
// Run: dotnet run -c Release --project bench -- --filter '*MemoryBandwidth*'. Test: CpuBackendTests.ReadBandwidth*.
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Host memory read bandwidth, as the decode GEMVs and attention see it.</summary>
public static unsafe class CpuReadBandwidth
{
    /// <summary>Size of the buffer Measure sums: far larger than any cache.</summary>
    public const long BufferBytes = 1L << 30;

    private const int Chunks = 64;   // work items handed to the pool: 16 MiB each, so the threads finish together

    /// <summary>Threads of the CPU backend's pool (LLAMA_THREADS or the processor count).</summary>
    public static int PoolThreads => CpuParallel.Threads;

    /// <summary>Best read GB/s over several passes of a buffer of `bytes` (STREAM reports the best pass too); threads 0 means the whole pool.</summary>
    public static double Measure(int threads, int passes = 8, long bytes = BufferBytes)
    {
        using var probe = new Probe(bytes);
        return probe.Measure(threads, passes);
    }

    /// <summary>A filled buffer kept for repeated measurements (between the repetitions of a benchmark).</summary>
    public sealed class Probe : IReadProbe
    {
        private float* _p;
        private readonly long _bytes;

        public Probe(long bytes = BufferBytes)
        {
            _p = AllocFilled(bytes);
            _bytes = bytes;
            Sum(_p, _bytes, 0);   // warm up the pool and the code
        }

        /// <summary>Best read GB/s over `passes` sums of the buffer on `threads` threads (0: the whole pool).</summary>
        public double Measure(int threads, int passes = 8)
        {
            ObjectDisposedException.ThrowIf(_p == null, this);
            double best = double.MaxValue;
            for (int i = 0; i < passes; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Sum(_p, _bytes, threads);
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return _bytes / best / 1e9;
        }

        double IReadProbe.Measure(int passes) => Measure(0, passes);

        public string Description => $"{_bytes >> 20} MiB summed on {PoolThreads} threads";

        public void Dispose()
        {
            NativeMemory.AlignedFree(_p);
            _p = null;
        }
    }

    /// <summary>A page-aligned buffer of `bytes` (a multiple of 4 KiB) filled with 1f, every page touched.</summary>
    public static float* AllocFilled(long bytes)
    {
        if (bytes <= 0 || bytes % 4096 != 0) throw new ArgumentOutOfRangeException(nameof(bytes), $"{bytes} is not a positive multiple of 4096");
        var p = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        for (long i = 0; i < bytes / 4; i += 1 << 28) new Span<float>(p + i, (int)Math.Min(1 << 28, bytes / 4 - i)).Fill(1f);
        return p;
    }

    /// <summary>Sum of the floats of a buffer of `bytes` on 1 thread, or on the pool when threads is 0 (or above 1).</summary>
    public static float Sum(float* p, long bytes, int threads)
    {
        long n = bytes / sizeof(float);
        if (threads == 1) return SumRange(p, n);
        long per = (n / Chunks + 63) / 64 * 64;
        var partial = new float[Chunks];
        CpuParallel.For(Chunks, i => partial[i] = SumRange(p + Math.Min(n, i * per), Math.Clamp(n - i * per, 0, per)));
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

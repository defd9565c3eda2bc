// Persistent worker pool behind the CPU ops: a parallel-for over work-item indices with microsecond overhead.
// Workers spin for a short while after each job (decode issues many small ops back to back), then block.
// LLAMA_THREADS=n overrides the thread count. Exercised by CpuOpsTests (MatMul, Attention) and CpuParallelTests.
using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace LlamaRun.Backends.Cpu;

/// <summary>Runs work items on a fixed set of threads (the caller included); one job at a time.</summary>
internal static class CpuParallel
{
    private sealed class Job(Action<int> body, int count)
    {
        public readonly Action<int> Body = body;
        public readonly int Count = count;
        public int Next;
        public int Done;
        public Exception? Error;
    }

    private static readonly long SpinTicks = Stopwatch.Frequency / 2000; // 0.5 ms of spinning before blocking
    private static readonly object Gate = new();
    private static readonly object RunLock = new();
    private static Job? _current;
    private static int _generation;
    private static bool _started;

    [ThreadStatic] private static bool _insideJob;

    /// <summary>Number of threads a job runs on, the calling thread included.</summary>
    public static int Threads { get; } = ReadThreadCount();

    private static int ReadThreadCount()
    {
        var env = Environment.GetEnvironmentVariable("LLAMA_THREADS");
        if (int.TryParse(env, out int n) && n > 0) return Math.Min(n, 1024);
        return Math.Max(1, Environment.ProcessorCount);
    }

    /// <summary>Calls body(i) for i in [0, count), spread over the pool; rethrows the first exception.</summary>
    public static void For(int count, Action<int> body)
    {
        if (count <= 0) return;
        if (count == 1 || Threads == 1 || _insideJob)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        lock (RunLock)
        {
            EnsureStarted();
            var job = new Job(body, count);
            Volatile.Write(ref _current, job);
            lock (Gate)
            {
                _generation++;
                Monitor.PulseAll(Gate);
            }
            _insideJob = true;
            try { Work(job); }
            finally { _insideJob = false; }
            var spin = new SpinWait();
            while (Volatile.Read(ref job.Done) < count) spin.SpinOnce(sleep1Threshold: -1);
            Volatile.Write(ref _current, null);
            if (job.Error is { } error) ExceptionDispatchInfo.Throw(error);
        }
    }

    private static void Work(Job job)
    {
        int i;
        while ((i = Interlocked.Increment(ref job.Next) - 1) < job.Count)
        {
            try
            {
                if (Volatile.Read(ref job.Error) is null) job.Body(i);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref job.Error, e, null);
            }
            Interlocked.Increment(ref job.Done);
        }
    }

    private static void EnsureStarted()
    {
        if (_started) return;
        _started = true;
        for (int w = 1; w < Threads; w++)
        {
            int startGeneration = _generation;
            var thread = new Thread(() => WorkerLoop(startGeneration)) { IsBackground = true, Name = $"llama-cpu-{w}" };
            thread.Start();
        }
    }

    private static void WorkerLoop(int seen)
    {
        _insideJob = true;
        while (true)
        {
            int g = Volatile.Read(ref _generation);
            if (g == seen)
            {
                long until = Stopwatch.GetTimestamp() + SpinTicks;
                while ((g = Volatile.Read(ref _generation)) == seen && Stopwatch.GetTimestamp() < until)
                    Thread.SpinWait(8);
                if (g == seen)
                {
                    lock (Gate)
                    {
                        while ((g = _generation) == seen) Monitor.Wait(Gate);
                    }
                }
            }
            seen = g;
            if (Volatile.Read(ref _current) is { } job) Work(job);
        }
    }
}

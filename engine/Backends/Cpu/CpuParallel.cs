// Persistent worker pool behind the CPU ops: a parallel-for over work-item indices with microsecond overhead.
// Workers spin briefly after each job (decode issues many small ops back to back), yielding, then block.
// ForOutputs lets the caller redo an item a descheduled worker holds, so a busy machine cannot stall a GEMV; that
// worker may go on reading the job's inputs, so memory is freed only after WaitForWorkers (CpuBackend does it).
// LLAMA_THREADS=n overrides the thread count. Exercised by CpuBackendTests.Pool* and CpuParallelTests.
using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace LlamaRun.Backends.Cpu;

/// <summary>Computes the outputs of one work item into output, which holds that item's outputLength floats.</summary>
internal unsafe delegate void ItemOutputBody(int item, float* output);

/// <summary>Runs work items on a fixed set of threads (the caller included); one job at a time.</summary>
internal static unsafe class CpuParallel
{
    // Item states of a ForOutputs job: free, claimed by a worker, being copied out by it, finished.
    private const int Free = 0, Claimed = 1, Committing = 2, Finished = 3;

    private sealed class Job
    {
        public Action<int>? Body;
        public ItemOutputBody? OutputBody;
        public float* Dst;
        public int OutputLength, TotalOutputs;
        public int[]? States;
        public int Count;
        public int Next;
        public int Done;
        public Exception? Error;
    }

    private static readonly long SpinTicks = Stopwatch.Frequency / 1000;   // 1 ms of spinning before blocking
    private static readonly long YieldAfterTicks = Stopwatch.Frequency / 20000;   // pure spinning for the first 50 µs
    private static readonly object Gate = new();
    private static readonly object RunLock = new();
    private static Job? _current;
    private static int _generation;
    private static int _sleepers;
    private static int _inBody;   // workers inside an item body (a redone item's worker may still be reading inputs)
    private static bool _started;

    [ThreadStatic] private static bool _insideJob;
    [ThreadStatic] private static float[]? _scratch;

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
            var job = new Job { Body = body, Count = count };
            Publish(job);
            _insideJob = true;
            try { WorkPlain(job); }
            finally { _insideJob = false; }
            var spin = new SpinWait();
            while (Volatile.Read(ref job.Done) < count) spin.SpinOnce(sleep1Threshold: -1);
            Volatile.Write(ref _current, null);
            if (job.Error is { } error) ExceptionDispatchInfo.Throw(error);
        }
    }

    /// <summary>
    /// Fills dst[0, totalOutputs): item i writes dst[i * outputLength, ...) and nothing else, the same values whoever
    /// runs it; workers compute into scratch and copy out only if the caller has not redone the item meanwhile.
    /// </summary>
    public static void ForOutputs(int count, int outputLength, int totalOutputs, float* dst, ItemOutputBody body)
    {
        if (count <= 0) return;
        if (count == 1 || Threads == 1 || _insideJob)
        {
            for (int i = 0; i < count; i++) body(i, dst + (nint)i * outputLength);
            return;
        }
        lock (RunLock)
        {
            var job = new Job
            {
                OutputBody = body, Dst = dst, OutputLength = outputLength, TotalOutputs = totalOutputs,
                States = new int[count], Count = count,
            };
            Publish(job);
            _insideJob = true;
            try { CallerOutputs(job); }
            finally { _insideJob = false; }
            Volatile.Write(ref _current, null);
            if (job.Error is { } error) ExceptionDispatchInfo.Throw(error);
        }
    }

    /// <summary>
    /// Waits until no worker is still running an item ForOutputs has already redone; call before freeing memory
    /// that a finished ForOutputs job read.
    /// </summary>
    public static void WaitForWorkers()
    {
        var spin = new SpinWait();
        while (Volatile.Read(ref _inBody) > 0) spin.SpinOnce();
    }

    private static void Publish(Job job)
    {
        EnsureStarted();
        Volatile.Write(ref _current, job);
        Interlocked.Increment(ref _generation);
        if (Volatile.Read(ref _sleepers) > 0)
            lock (Gate) Monitor.PulseAll(Gate);
    }

    private static void WorkPlain(Job job)
    {
        int i;
        while ((i = Interlocked.Increment(ref job.Next) - 1) < job.Count)
        {
            try
            {
                if (Volatile.Read(ref job.Error) is null) job.Body!(i);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref job.Error, e, null);
            }
            Interlocked.Increment(ref job.Done);
        }
    }

    // The caller takes free items, then waits for the items workers hold; one held for more than twice the caller's
    // own time per item (its worker was descheduled) is taken back and computed again straight into dst.
    private static void CallerOutputs(Job job)
    {
        int[] states = job.States!;
        long start = Stopwatch.GetTimestamp();
        int mine = 0, i;
        while ((i = Interlocked.Increment(ref job.Next) - 1) < job.Count)
        {
            if (Interlocked.CompareExchange(ref states[i], Finished, Free) != Free) continue;
            RunOutputItem(job, i, job.Dst + (nint)i * job.OutputLength);
            mine++;
        }
        long perItem = (Stopwatch.GetTimestamp() - start) / Math.Max(1, mine);
        long patience = 2 * perItem + Stopwatch.Frequency / 200000;   // + 5 µs
        long waitStart = Stopwatch.GetTimestamp();
        while (Volatile.Read(ref job.Done) < job.Count)
        {
            if (Stopwatch.GetTimestamp() - waitStart < patience)
            {
                Thread.SpinWait(4);
                continue;
            }
            for (int k = 0; k < job.Count; k++)
            {
                int s = Volatile.Read(ref states[k]);
                if (s == Committing)
                {
                    Thread.Yield();   // the copy out is a few hundred bytes; its worker may be off the CPU
                    break;
                }
                if (s != Free && s != Claimed) continue;
                if (Interlocked.CompareExchange(ref states[k], Finished, s) != s) continue;
                RunOutputItem(job, k, job.Dst + (nint)k * job.OutputLength);
            }
        }
    }

    private static void RunOutputItem(Job job, int i, float* output)
    {
        try
        {
            if (Volatile.Read(ref job.Error) is null) job.OutputBody!(i, output);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref job.Error, e, null);
        }
        Interlocked.Increment(ref job.Done);
    }

    private static void WorkOutputs(Job job)
    {
        int[] states = job.States!;
        int len = job.OutputLength;
        var scratch = _scratch;
        if (scratch is null || scratch.Length < len) _scratch = scratch = new float[Math.Max(len, 256)];
        int i;
        fixed (float* s = scratch)
        {
            while ((i = Interlocked.Increment(ref job.Next) - 1) < job.Count)
            {
                Interlocked.Increment(ref _inBody);
                if (Interlocked.CompareExchange(ref states[i], Claimed, Free) != Free)
                {
                    Interlocked.Decrement(ref _inBody);
                    continue;
                }
                try
                {
                    if (Volatile.Read(ref job.Error) is null) job.OutputBody!(i, s);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref job.Error, e, null);
                }
                Interlocked.Decrement(ref _inBody);
                if (Interlocked.CompareExchange(ref states[i], Committing, Claimed) != Claimed) continue;   // redone
                int n = Math.Min(len, job.TotalOutputs - i * len);
                new ReadOnlySpan<float>(s, n).CopyTo(new Span<float>(job.Dst + (nint)i * len, n));
                Volatile.Write(ref states[i], Finished);
                Interlocked.Increment(ref job.Done);
            }
        }
    }

    private static void EnsureStarted()
    {
        if (_started) return;
        _started = true;
        for (int w = 1; w < Threads; w++)
        {
            int startGeneration = Volatile.Read(ref _generation);
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
                long t0 = Stopwatch.GetTimestamp();
                while ((g = Volatile.Read(ref _generation)) == seen)
                {
                    long dt = Stopwatch.GetTimestamp() - t0;
                    if (dt > SpinTicks) break;
                    if (dt > YieldAfterTicks) Thread.Yield();
                    else Thread.SpinWait(16);
                }
                if (g == seen)
                {
                    lock (Gate)
                    {
                        Interlocked.Increment(ref _sleepers);   // a full fence before the generation is read again
                        while ((g = Volatile.Read(ref _generation)) == seen) Monitor.Wait(Gate);
                        Interlocked.Decrement(ref _sleepers);
                    }
                }
            }
            seen = g;
            if (Volatile.Read(ref _current) is not { } job) continue;
            if (job.OutputBody is not null) WorkOutputs(job);
            else WorkPlain(job);
        }
    }
}

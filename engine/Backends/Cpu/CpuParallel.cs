// Persistent worker pool behind the CPU ops: a parallel-for over work-item indices with microsecond overhead.
// Workers spin briefly after each job (decode issues many small ops back to back), yielding, then block.
// ForOutputs gives each thread a contiguous range of items (a GEMV's rows then stream in memory order per thread, which
// the hardware prefetchers follow best), lets a thread done with its range take items from the back of another's, and
// lets the caller redo an item a descheduled worker holds, so a busy machine cannot stall a GEMV; that worker may go on
// reading the job's inputs, so memory is freed only after WaitForWorkers (CpuBackend does it).
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
        public int[]? Ranges;   // ForOutputs: thread p's next item at [p * RangeStride], its range's end at [p * RangeStride + 1]
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
    [ThreadStatic] private static int _participant;   // 0 for the caller of a job, w for worker thread w
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
                States = new int[count], Ranges = SplitRanges(count), Count = count,
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

    // Ints between two threads' range counters: 64 bytes, so they sit on different cache lines.
    private const int RangeStride = 16;

    // Thread p (0 = caller) starts with items [p * count / Threads, (p + 1) * count / Threads).
    private static int[] SplitRanges(int count)
    {
        var r = new int[Threads * RangeStride];
        for (int p = 0; p < Threads; p++)
        {
            r[p * RangeStride] = (int)((long)p * count / Threads);
            r[p * RangeStride + 1] = (int)((long)(p + 1) * count / Threads);
        }
        return r;
    }

    // The next item thread p should try: the front of its own range, then the back of the others' (-1 when all are
    // taken). Two threads can pass each other at the meeting point and leave an item in neither range; the caller
    // sweeps for those once the ranges are exhausted.
    private static int NextItem(Job job, int p)
    {
        int[] r = job.Ranges!;
        int own = p * RangeStride;
        int i = Interlocked.Increment(ref r[own]) - 1;
        if (i < Volatile.Read(ref r[own + 1])) return i;
        for (int k = 1; k < Threads; k++)
        {
            int q = (p + k) % Threads * RangeStride;
            int e = Interlocked.Decrement(ref r[q + 1]);
            if (e >= Volatile.Read(ref r[q])) return e;
        }
        return -1;
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
        while ((i = NextItem(job, 0)) >= 0)
        {
            if (Interlocked.CompareExchange(ref states[i], Finished, Free) != Free) continue;
            RunOutputItem(job, i, job.Dst + (nint)i * job.OutputLength);
            mine++;
        }
        for (int k = 0; k < job.Count; k++)   // items the range counters passed over
        {
            if (Interlocked.CompareExchange(ref states[k], Finished, Free) != Free) continue;
            RunOutputItem(job, k, job.Dst + (nint)k * job.OutputLength);
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
            while ((i = NextItem(job, _participant)) >= 0)
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
            int participant = w;
            var thread = new Thread(() => WorkerLoop(startGeneration, participant)) { IsBackground = true, Name = $"llama-cpu-{w}" };
            thread.Start();
        }
    }

    private static void WorkerLoop(int seen, int participant)
    {
        _insideJob = true;
        _participant = participant;
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

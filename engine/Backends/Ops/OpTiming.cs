// Times a prepared op on its backend, once every kernel is loaded: a warm-up of synchronized launches in windows of 0.1 s, at least 5 (2 for an
// op slower than a window), until a window is no more than 5% faster than the one before (.NET's tiered JIT needs
// 0.1-1 s of calls to swap in an op's optimized code; at most 3 s), the last launch sizing the batches; then 7 batches
// of launches queued back to back with one synchronize each (so a GPU's launches overlap as in a forward pass); the
// median batch.
// Used by `llama-run bench --kernels` and `Bench --quick`.
using System.Diagnostics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public static class OpTiming
{
    /// <summary>Input sets that together exceed a GPU's L2 cache (50 MB on an H100/H200), so each launch reads memory.</summary>
    public static int ColdCopies(OpCase c, int kvElementSize) => (int)Math.Clamp((256L << 20) / Math.Max(1, c.Bytes(kvElementSize)), 1, 8);

    /// <summary>Seconds per launch: the median of batches of about batchSeconds each (at least 3 launches a batch).</summary>
    public static double Seconds(IBackend backend, PreparedOp op, double batchSeconds = 0.05, int batches = 7)
    {
        // Every kernel loaded first: while the driver compiles one in the background, the launches being timed wait on it
        // (H100, the first rope case of `bench --kernels --op rope`: 3.4 ms a launch instead of about 70 us).
        backend.WaitUntilReady();
        int launch = 0;
        long start = Stopwatch.GetTimestamp(), t0;
        double one = 0, previous = double.PositiveInfinity;
        while (true)
        {
            long window = Stopwatch.GetTimestamp();
            int n = 0;
            do
            {
                t0 = Stopwatch.GetTimestamp();
                op.Run(launch++);
                backend.Synchronize();
                one = Math.Max(1e-7, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                n++;
            } while (Stopwatch.GetElapsedTime(window).TotalSeconds < 0.1);
            double mean = Stopwatch.GetElapsedTime(window).TotalSeconds / n;
            double elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
            // (An op slower than a window is compiled after its first launches: two agreeing windows suffice.)
            if (((elapsed >= 0.5 || mean > 0.1) && mean > 0.95 * previous) || elapsed > 3) break;
            previous = mean;
        }
        int perBatch = (int)Math.Clamp(batchSeconds / one, 3, 100_000);
        var perOp = new double[batches];
        for (int b = 0; b < batches; b++)
        {
            t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < perBatch; i++) op.Run(launch++);
            backend.Synchronize();
            perOp[b] = Stopwatch.GetElapsedTime(t0).TotalSeconds / perBatch;
        }
        Array.Sort(perOp);
        return perOp[batches / 2];
    }
}

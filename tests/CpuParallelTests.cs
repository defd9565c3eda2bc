// Tests of the CPU worker pool's ForOutputs: every output written once per item, a stalled worker's item redone by the
// caller without a late copy out, and errors rethrown. Run: dotnet test tests/Tests.csproj --filter CpuParallelTests
using LlamaRun.Backends.Cpu;
using Xunit;

namespace LlamaRun.Tests;

public unsafe class CpuParallelTests
{
    private static bool OnWorker => Thread.CurrentThread.Name?.StartsWith("llama-cpu-", StringComparison.Ordinal) == true;

    [Fact]
    public void ForOutputsFillsEveryOutput()
    {
        for (int round = 0; round < 300; round++)
        {
            int len = round % 7 + 1, total = round % 53 + 1, count = (total + len - 1) / len;
            var dst = new float[total + 1];
            dst[total] = -99;   // guard past the last output
            fixed (float* d = dst)
            {
                CpuParallel.ForOutputs(count, len, total, d, (item, output) =>
                {
                    for (int j = 0; j < len && item * len + j < total; j++) output[j] = item * len + j + 0.5f;
                });
            }
            for (int k = 0; k < total; k++) Assert.Equal(k + 0.5f, dst[k]);
            Assert.Equal(-99, dst[total]);
        }
    }

    [Fact]
    public void StalledWorkerItemIsRedoneByCallerAndNeverCopiedLate()
    {
        if (CpuParallel.Threads < 2) return;
        const int count = 64, len = 4;
        var dst = new float[count * len];
        int workerItems = 0;
        var t0 = System.Diagnostics.Stopwatch.StartNew();
        fixed (float* d = dst)
        {
            CpuParallel.ForOutputs(count, len, count * len, d, (item, output) =>
            {
                if (OnWorker && Interlocked.Increment(ref workerItems) == 1)
                {
                    Thread.Sleep(400);   // a descheduled worker
                    for (int j = 0; j < len; j++) output[j] = -1;   // a stale result that must never reach dst
                    return;
                }
                for (int j = 0; j < len; j++) output[j] = item;
            });
        }
        Assert.True(t0.ElapsedMilliseconds < 350, $"the caller waited {t0.ElapsedMilliseconds} ms for a stalled worker");
        Thread.Sleep(600);   // the worker wakes and tries to copy its stale item out
        for (int k = 0; k < count * len; k++) Assert.Equal(k / len, dst[k]);
    }

    [Fact]
    public void ForOutputsRethrowsTheFirstError()
    {
        var dst = new float[100];
        var e = Assert.Throws<InvalidOperationException>(() =>
        {
            fixed (float* d = dst)
                CpuParallel.ForOutputs(50, 2, 100, d, (item, output) =>
                {
                    if (item == 17) throw new InvalidOperationException("item 17");
                    output[0] = output[1] = item;
                });
        });
        Assert.Equal("item 17", e.Message);
        fixed (float* d = dst)
            CpuParallel.ForOutputs(50, 2, 100, d, (item, output) => output[0] = output[1] = item);
        for (int k = 0; k < 100; k++) Assert.Equal(k / 2, dst[k]);
    }
}

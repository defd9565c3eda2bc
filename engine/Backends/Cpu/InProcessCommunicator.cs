// Collectives between ranks that are threads of one process, each on its own CPU backend (host tensors): a rank
// publishes its buffer, all meet at a barrier, each reads every rank's buffer (summing in rank order, so all get the
// same bits), and all meet again before the buffers are reused. Every wait is bounded: a rank that stops calling makes
// the others fail with one line after the timeout, and Abort (called by a rank that failed) makes them fail at once.
// RunRanks starts the threads. Test: tests/TensorParallelTests.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>An ICommunicator for Size ranks running as threads of this process over host-memory tensors.</summary>
public sealed unsafe class InProcessCommunicator(int size, TimeSpan? timeout = null) : ICommunicator, IDisposable
{
    private readonly Barrier _barrier = new(size);
    private readonly float[][] _slots = Enumerable.Range(0, size).Select(_ => Array.Empty<float>()).ToArray();
    private readonly CancellationTokenSource _abort = new();
    private readonly TimeSpan _timeout = timeout ?? TimeSpan.FromSeconds(60);
    private string? _abortReason;

    public int Size { get; } = size;

    public void AllReduce(int rank, IBackend backend, Tensor x)
    {
        Check(rank, backend, x);
        Publish(rank, x);
        Meet(rank, "all-reduce");
        var sum = new Span<float>((void*)x.Pointer, (int)x.Length);
        _slots[0].AsSpan(0, sum.Length).CopyTo(sum);
        for (int r = 1; r < Size; r++) System.Numerics.Tensors.TensorPrimitives.Add(sum, _slots[r].AsSpan(0, sum.Length), sum);
        Meet(rank, "all-reduce");
    }

    public void AllGather(int rank, IBackend backend, Tensor local, Tensor full)
    {
        Check(rank, backend, local);
        Check(rank, backend, full);
        if (full.Rows != local.Rows || full.Cols != local.Cols * Size)
            throw new ArgumentException($"all-gather of {local} over {Size} ranks into {full}", nameof(full));
        Publish(rank, local);
        Meet(rank, "all-gather");
        int cols = local.Cols;
        for (int row = 0; row < local.Rows; row++)
        {
            var dst = new Span<float>((float*)full.Pointer + (long)row * full.Cols, full.Cols);
            for (int r = 0; r < Size; r++) _slots[r].AsSpan(row * cols, cols).CopyTo(dst.Slice(r * cols, cols));
        }
        Meet(rank, "all-gather");
    }

    public void Abort(string reason)
    {
        _abortReason ??= reason;
        _abort.Cancel();
    }

    /// <summary>Runs body(rank) on Size threads and waits for all; the first failure aborts the others and is rethrown.</summary>
    public T[] RunRanks<T>(Func<int, T> body)
    {
        var results = new T[Size];
        var errors = new Exception?[Size];
        var threads = Enumerable.Range(0, Size).Select(r => new Thread(() =>
        {
            try { results[r] = body(r); }
            catch (Exception e)
            {
                errors[r] = e;
                Abort($"rank {r} failed: {e.Message}");
            }
        }, 16 << 20) { IsBackground = true, Name = $"tp rank {r}" }).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        // The rank that failed first (its own error, not the aborts it caused in the others).
        var first = errors.FirstOrDefault(e => e is not null and not CollectiveAbortedException) ?? errors.FirstOrDefault(e => e is not null);
        // Rethrown as it was (its type decides how a caller reports it); the others only saw the abort it caused.
        if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        return results;
    }

    private void Publish(int rank, Tensor x)
    {
        if (_slots[rank].Length < x.Length) _slots[rank] = new float[x.Length];
        new ReadOnlySpan<float>((void*)x.Pointer, (int)x.Length).CopyTo(_slots[rank]);
    }

    private void Meet(int rank, string op)
    {
        bool met;
        try { met = _barrier.SignalAndWait(_timeout, _abort.Token); }
        catch (OperationCanceledException) { throw new CollectiveAbortedException($"rank {rank}: {op} aborted: {_abortReason}"); }
        catch (BarrierPostPhaseException e) { throw new CollectiveAbortedException($"rank {rank}: {op} failed: {e.Message}"); }
        if (!met)
        {
            Abort($"rank {rank}: {op} timed out after {_timeout.TotalSeconds:0} s waiting for the other ranks");
            throw new CollectiveAbortedException(_abortReason!);
        }
    }

    private void Check(int rank, IBackend backend, Tensor x)
    {
        if ((uint)rank >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {Size}");
        if (x.OnAccelerator || x.DType != DType.F32)
            throw new ArgumentException($"the in-process communicator takes contiguous F32 host tensors, got {x} on {backend.Name}");
    }

    public void Dispose()
    {
        _barrier.Dispose();
        _abort.Dispose();
    }
}

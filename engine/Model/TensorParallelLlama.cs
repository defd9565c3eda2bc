// One model as N tensor-parallel ranks: each rank is a Llama on its own backend (a GPU, or a CPU backend in tests and
// `check --tp`) holding its ShardPlan's slices of the weights, driven by a thread of its own, and the ranks meet in the
// communicator's collectives (an all-reduce after each attention output and MLP, an all-gather of the logits). Forward
// runs every rank's forward at once and hands back rank 0's logits (every rank holds the same, gathered). A rank that
// fails aborts the communicator, so the others fail at their next collective instead of waiting, and the first
// failure is rethrown. Exercised by tests/TensorParallelTests.cs; used by `llama-run bench --tp N`.
using LlamaRun.Core;

namespace LlamaRun.Model;

/// <summary>The forward pass a caller drives, whether one Llama or a tensor-parallel group of them.</summary>
public interface ILanguageModel
{
    int VocabSize { get; }

    /// <summary>The context length the KV cache was allocated for.</summary>
    int MaxSeq { get; }

    /// <summary>Forgets the cached positions.</summary>
    void Reset();

    /// <summary>As Llama.Forward.</summary>
    void Forward(ReadOnlySpan<int> tokens, int startPos, LogitsRows rows, Span<float> logits, int ropeLength = 0);
}

/// <summary>N ranks of one Llama, one thread and one backend each; owns the ranks' models and weights (not the backends).</summary>
public sealed class TensorParallelLlama : ILanguageModel, IDisposable
{
    private readonly Rank[] _ranks;
    private readonly ICommunicator _communicator;
    private readonly Thread[] _threads;
    private readonly Barrier _start, _done;
    private readonly Exception?[] _errors;
    private int[] _tokens = [];
    private (int StartPos, LogitsRows Rows, int Length, int RopeLength) _call;
    private float[] _logits = [];
    private Action<Rank>? _job;
    private bool _disposed;
    private string? _broken;   // a call whose ranks never finished: the group cannot run again

    private sealed class Rank(int index)
    {
        public int Index { get; } = index;
        public LlamaWeights? Weights { get; set; }
        public Llama? Model { get; set; }
        public float[] Scratch { get; set; } = [];   // the logits of a rank other than 0
    }

    private TensorParallelLlama(int size, ICommunicator communicator)
    {
        _communicator = communicator;
        _ranks = [.. Enumerable.Range(0, size).Select(r => new Rank(r))];
        _errors = new Exception?[size];
        _start = new Barrier(size + 1);
        _done = new Barrier(size + 1);
        _threads = [.. _ranks.Select(r => new Thread(() => Work(r), 16 << 20) { IsBackground = true, Name = $"tp rank {r.Index}" })];
        foreach (var t in _threads) t.Start();
    }

    /// <summary>The unsharded sizes (each rank runs its slice of them).</summary>
    public required LlamaConfig Config { get; init; }

    /// <summary>Ranks in the group.</summary>
    public int Size => _ranks.Length;

    /// <summary>How long a call may take before the communicator is aborted (a rank that stopped, a collective that never completes).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(10);

    public int VocabSize => Config.VocabSize;

    public int MaxSeq { get; private init; }

    /// <summary>Every rank's model (rank r on backends[r]).</summary>
    public IReadOnlyList<Llama> Ranks => [.. _ranks.Select(r => r.Model!)];

    /// <summary>Bytes of weights one decode step reads, summed over the ranks.</summary>
    public long DecodeReadBytes => _ranks.Sum(r => r.Weights!.DecodeReadBytes);

    /// <summary>Bytes of all ranks' weights.</summary>
    public long WeightBytes => _ranks.Sum(r => r.Weights!.WeightBytes);

    /// <summary>
    /// Loads rank r's shard from sourceOf(r) (a checkpoint or random weights, each rank reading only its slices) onto
    /// backends[r], all ranks at once, and makes its model; sizes that do not split over the ranks fail in one line first.
    /// progress(rank, done, total): each rank's bytes uploaded so far (called on the rank's thread).
    /// </summary>
    public static TensorParallelLlama Create(LlamaConfig config, IReadOnlyList<IBackend> backends, ICommunicator communicator,
        Func<int, IWeightSource> sourceOf, int maxSeq, RopeSchedule rope, int maxBatch = 512, DType activations = DType.F32,
        Action<int, long, long>? progress = null)
    {
        int n = backends.Count;
        if (communicator.Size != n) throw new ArgumentException($"{n} backends but a communicator of {communicator.Size} ranks");
        for (int r = 0; r < n; r++) ShardPlan.For(config, r, n);   // throws the one-line reason before any rank loads
        var group = new TensorParallelLlama(n, communicator) { Config = config, MaxSeq = maxSeq };
        try
        {
            group.RunAll(rank =>
            {
                var b = backends[rank.Index];
                rank.Weights = LlamaWeights.Load(sourceOf(rank.Index), config, b, shard: ShardPlan.For(config, rank.Index, n),
                    progress: progress is null ? null : (d, t) => progress(rank.Index, d, t));
                rank.Model = Llama.Create(config, rank.Weights, b, maxSeq, rope, maxBatch, activations, new TensorShard(rank.Index, communicator));
            });
        }
        catch
        {
            group.Dispose();
            throw;
        }
        return group;
    }

    public void Reset()
    {
        foreach (var r in _ranks) r.Model!.Reset();
    }

    public void Forward(ReadOnlySpan<int> tokens, int startPos, LogitsRows rows, Span<float> logits, int ropeLength = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_tokens.Length < tokens.Length) _tokens = new int[tokens.Length];
        tokens.CopyTo(_tokens);
        if (_logits.Length < logits.Length) _logits = new float[logits.Length];
        _call = (startPos, rows, tokens.Length, ropeLength);
        int wanted = logits.Length;
        RunAll(rank =>
        {
            // Rank 0 writes the logits the caller gets; the others' (the same values) are not kept.
            var dst = rank.Index == 0 ? _logits.AsSpan(0, wanted) : Span<float>.Empty;
            var (start, r, length, ropeLength) = _call;
            var m = rank.Model!;
            if (rank.Index == 0 || r == LogitsRows.None) m.Forward(_tokens.AsSpan(0, length), start, r, dst, ropeLength);
            else
            {
                // Every rank computes (and gathers) the logits too: the collectives need all of them.
                if (rank.Scratch.Length < wanted) rank.Scratch = new float[wanted];
                m.Forward(_tokens.AsSpan(0, length), start, r, rank.Scratch.AsSpan(0, wanted), ropeLength);
            }
        });
        _logits.AsSpan(0, wanted).CopyTo(logits);
    }

    // Runs job on every rank's thread and waits for all; the first failure (not the aborts it caused) is rethrown.
    private void RunAll(Action<Rank> job)
    {
        if (_broken is not null) throw new InvalidOperationException($"the tensor-parallel group cannot run again: {_broken}");
        Array.Clear(_errors);
        _job = job;
        _start.SignalAndWait();
        if (!_done.SignalAndWait(Timeout))
        {
            _communicator.Abort($"the ranks did not finish within {Timeout.TotalSeconds:0} s");
            if (!_done.SignalAndWait(TimeSpan.FromSeconds(60)))
            {
                _broken = $"its ranks were still running {Timeout.TotalSeconds + 60:0} s after a call began, after an abort";
                throw new TimeoutException($"tensor-parallel call: {_broken}");
            }
        }
        _job = null;
        var first = _errors.FirstOrDefault(e => e is not null and not CollectiveAbortedException)
            ?? _errors.FirstOrDefault(e => e is not null);
        if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }

    private void Work(Rank rank)
    {
        while (true)
        {
            _start.SignalAndWait();
            var job = _job;
            if (job is null) return;   // Dispose
            try
            {
                job(rank);
            }
            catch (Exception e)
            {
                _errors[rank.Index] = e;
                _communicator.Abort($"rank {rank.Index} failed: {e.Message.Split('\n')[0]}");
            }
            _done.SignalAndWait();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _job = null;
        // The workers see no job and end (unless a stuck call left one behind: background threads, not waited for).
        if (_broken is null && _start.SignalAndWait(TimeSpan.FromSeconds(30)))
            foreach (var t in _threads) t.Join();
        foreach (var r in _ranks)
        {
            r.Model?.Dispose();
            r.Weights?.Dispose();
        }
        _start.Dispose();
        _done.Dispose();
    }
}

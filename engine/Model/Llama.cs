// The Llama forward pass, written once against IBackend (DESIGN R1): embed, per layer attention and SwiGLU MLP
// with pre-norms and residuals, final norm, lm_head. Run it through `llama-run -m DIR -p TEXT`. As one rank of a
// tensor-parallel group (a TensorShard, weights loaded with its ShardPlan) it runs its heads and FFN slice, sums the
// attention and MLP outputs over the ranks (all-reduce) and gathers the vocabulary-split logits.
using LlamaRun.Core;

namespace LlamaRun.Model;

/// <summary>Which rows of logits a forward pass returns.</summary>
public enum LogitsRows { None, Last, All }

/// <summary>A loaded Llama with its KV cache and activation buffers, ready to run on one backend.</summary>
public sealed class Llama : ILanguageModel, IDisposable
{
    private readonly Buffers _act;
    private readonly IDecodeSteps? _steps;   // decode steps the backend replays (null: each step queues its ops)
    private RopeTable? _cacheTable;   // the table the cached keys were rotated with
    private int _cacheLength;         // positions 0.._cacheLength-1 hold valid keys and values

    private Llama(LlamaConfig config, LlamaWeights weights, IBackend backend, int maxSeq, RopeSchedule rope, int maxBatch, DType activations,
        TensorShard? shard)
    {
        Shard = shard;
        Activations = activations;
        Config = config;
        Weights = weights;
        Backend = backend;
        MaxSeq = maxSeq;
        Rope = rope;
        MaxBatch = maxBatch;
        bool remap = rope.Base.Remap is not null;
        Cache = backend.AllocKvCache(config.NumHiddenLayers, maxSeq, config.NumKeyValueHeads, config.HeadDim, farKeys: remap);
        try
        {
            _act = new Buffers(backend, config, maxBatch, remap, shard?.Size ?? 0);
            _steps = shard is null ? backend.CreateDecodeSteps() : null;   // a rank's step waits on the others: queued op by op
        }
        catch
        {
            _act?.Dispose();
            Cache.Dispose();
            throw;
        }
    }

    /// <summary>The sizes this model runs: the checkpoint's, or one rank's heads and FFN slice (the vocabulary stays whole).</summary>
    public LlamaConfig Config { get; }

    /// <summary>This model's rank in a tensor-parallel group, or null.</summary>
    public TensorShard? Shard { get; }
    public LlamaWeights Weights { get; }
    public IBackend Backend { get; }
    public KvCache Cache { get; }
    public RopeSchedule Rope { get; }

    /// <summary>The context length the KV cache was allocated for.</summary>
    public int MaxSeq { get; }

    /// <summary>Tokens per chunk of a prefill (activation buffers hold this many rows).</summary>
    public int MaxBatch { get; }

    public int VocabSize => Config.VocabSize;

    /// <summary>Called with (layer, q, k) after the projections, before the rotation (analysis, e.g. rope-opt's key-dimension selection).</summary>
    public Action<int, Tensor, Tensor>? ProjectionObserver { get; set; }

    /// <summary>F32 computes in f32; BF16 or F16 rounds every op's output, and the intermediates a framework computing in that type rounds, to it.</summary>
    public DType Activations { get; }

    /// <summary>Wraps loaded weights with a KV cache for maxSeq positions and the given RoPE schedule.</summary>
    public static Llama Create(LlamaConfig config, LlamaWeights weights, IBackend backend, int maxSeq, RopeSchedule rope,
        int maxBatch = 512, DType activations = DType.F32, TensorShard? shard = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSeq, 1);
        if (shard is not null)
        {
            config = ShardPlan.For(config, shard.Rank, shard.Size).Local(config);
            if (weights.Layers[0].QProj.Rows != config.QDim || weights.LmHead.Rows != config.VocabSize / shard.Size)
                throw new ArgumentException($"the weights were not loaded for rank {shard.Rank} of {shard.Size}");
        }
        if (rope.Base.RotaryDim != config.RotaryDim)
            throw new ArgumentException($"RoPE table has {rope.Base.InvFreq.Length} pairs but the model rotates {config.RotaryDim / 2}");
        if (rope.Base.Remap is not null && rope.IsLengthDependent)
            throw new ArgumentException($"RoPE '{rope.Base.Method}': an index remap needs a fixed table, not one that changes with the length");
        if (rope.Base.Remap is not null && !backend.Capabilities.IndexRemap)
            throw new ArgumentException($"RoPE '{rope.Base.Method}' remaps positions, which the {backend.Name} backend does not do yet (use --device cpu)");
        return new Llama(config, weights, backend, maxSeq, rope, Math.Min(maxBatch, maxSeq), activations, shard);
    }

    /// <summary>Bytes the KV cache of maxSeq positions takes with the given element size (and grouped keys for an index remap).</summary>
    public static long KvCacheBytes(LlamaConfig config, int maxSeq, int elementSize, bool farKeys = false) =>
        (farKeys ? 3L : 2L) * config.NumHiddenLayers * maxSeq * config.KvDim * elementSize;

    /// <summary>Forgets the cached positions (a new sequence starts at position 0).</summary>
    public void Reset()
    {
        _cacheLength = 0;
        _cacheTable = null;
    }

    /// <summary>
    /// Runs tokens at positions startPos.. (the cache must hold positions 0..startPos-1) and writes logits:
    /// for Last, logits is [vocab] of the final token; for All, [tokens.Length, vocab]. ropeLength picks the RoPE table
    /// of a length-dependent schedule (default startPos + tokens.Length; a caller that feeds one sequence in pieces
    /// passes the whole length so every piece uses the same table).
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, int startPos, LogitsRows rows, Span<float> logits, int ropeLength = 0)
    {
        int n = tokens.Length, vocab = Config.VocabSize;
        if (n == 0) throw new ArgumentException("no tokens to run");
        if (startPos < 0 || startPos > _cacheLength) throw new ArgumentOutOfRangeException(nameof(startPos), $"position {startPos} but only {_cacheLength} are cached");
        if (startPos + n > MaxSeq) throw new ArgumentException($"{startPos + n} positions do not fit the context of {MaxSeq}");
        long needed = rows switch { LogitsRows.All => (long)n * vocab, LogitsRows.Last => vocab, _ => 0 };
        if (logits.Length < needed) throw new ArgumentException($"logits span holds {logits.Length} floats, {needed} needed");
        foreach (int t in tokens)
            if ((uint)t >= (uint)vocab) throw new ArgumentException($"token id {t} outside the vocabulary of {vocab}");

        // One table for the whole call, chosen by the length it reaches (as transformers does for one forward pass);
        // keys cached under another table are re-rotated first so every cached key matches the table in use.
        var table = Rope.For(Math.Max(ropeLength, startPos + n));
        if (_cacheTable is not null && startPos > 0 && !SameRotation(_cacheTable, table))
            Backend.RerotateCache(Cache, startPos, _cacheTable, table);
        _cacheTable = table;
        _cacheLength = startPos;

        for (int done = 0; done < n; done += MaxBatch)
        {
            int count = Math.Min(MaxBatch, n - done);
            var chunkRows = rows == LogitsRows.All ? LogitsRows.All
                : rows == LogitsRows.Last && done + count == n ? LogitsRows.Last : LogitsRows.None;
            var dst = chunkRows == LogitsRows.All ? logits.Slice(done * vocab, count * vocab)
                : chunkRows == LogitsRows.Last ? logits[..vocab] : default;
            ForwardChunk(tokens.Slice(done, count), startPos + done, table, chunkRows, dst);
            _cacheLength = startPos + done + count;
        }
    }

    // Keys depend only on the frequencies and the cos/sin magnitude (the query scale touches queries alone).
    private static bool SameRotation(RopeTable a, RopeTable b) =>
        ReferenceEquals(a, b) || (a.Magnitude == b.Magnitude && a.InvFreq.AsSpan().SequenceEqual(b.InvFreq)
            && (a.Remap is null ? b.Remap is null : a.Remap.SameAs(b.Remap)));

    // What a replayed decode step depends on besides its token and position (the tensors are this model's own).
    private readonly record struct StepKey(RopeTable Table, bool Logits);

    private void ForwardChunk(ReadOnlySpan<int> tokens, int pos, RopeTable table, LogitsRows rows, Span<float> logits)
    {
        if (tokens.Length == 1 && _steps is not null && ProjectionObserver is null)
        {
            // One decoded token: the backend may replay the whole step (one CUDA graph) instead of queuing its ops.
            int token = tokens[0];
            bool wanted = rows != LogitsRows.None;
            _steps.Run(token, pos, new StepKey(table, wanted), () =>
            {
                Layers([token], pos, table);
                if (wanted) LogitsBlock(0, 1, 0, 1);
            });
            if (wanted) Backend.Download(_act.Logits.SliceRows(0, 1), logits[..Config.VocabSize]);
            return;
        }
        Layers(tokens, pos, table);
        if (rows == LogitsRows.None) return;

        // lm_head in blocks of LogitRows rows so the logits buffer stays small for large vocabularies.
        int first = rows == LogitsRows.Last ? tokens.Length - 1 : 0, count = tokens.Length - first, vocab = Config.VocabSize;
        for (int r = 0; r < count; r += _act.LogitRows)
        {
            int n = Math.Min(_act.LogitRows, count - r);
            LogitsBlock(first, count, r, n);
            Backend.Download(_act.Logits.SliceRows(0, n), logits.Slice(r * vocab, n * vocab));
        }
    }

    // The final norm of the residual rows first .. first + count - 1 (on the first block), then lm_head of n of them
    // from row r into the logits buffer.
    private void LogitsBlock(int first, int count, int r, int n)
    {
        var b = Backend;
        var a = _act.Rows(first + count);
        var normed = a.Xb.SliceRows(0, count);
        if (r == 0)
        {
            b.RmsNorm(a.X.SliceRows(first, count), Weights.Norm, normed, Config.RmsNormEps, Activations);
            R(normed);
        }
        var block = _act.Logits.SliceRows(0, n);
        if (Shard is { } sh)
        {
            // This rank's vocabulary rows, then every rank's side by side.
            var local = _act.LocalLogits!.SliceRows(0, n);
            b.MatMul(normed.SliceRows(r, n), Weights.LmHead, local);
            sh.Communicator.AllGather(sh.Rank, b, local, block);
        }
        else
        {
            b.MatMul(normed.SliceRows(r, n), Weights.LmHead, block);
        }
        R(block);
    }

    // Embedding and every layer: the residual stream of the tokens ends in the activation buffer X.
    private void Layers(ReadOnlySpan<int> tokens, int pos, RopeTable table)
    {
        var b = Backend;
        var a = _act.Rows(tokens.Length);
        float eps = Config.RmsNormEps;

        b.Embedding(tokens, Weights.EmbedTokens, a.X);
        b.RmsNorm(a.X, Weights.Layers[0].InputLayernorm, a.Xb, eps, Activations);
        R(a.Xb);
        for (int l = 0; l < Config.NumHiddenLayers; l++)
        {
            // a.Xb holds this layer's normed input: each residual add is fused with the norm that follows it.
            var w = Weights.Layers[l];
            bool decode = tokens.Length == 1;
            // A decoded token in f32 on one rank, where the backend says the fused ops pay off (MatMulRope, MatMulSwiGlu).
            bool single = decode && Activations == DType.F32 && Shard is null;
            bool fused = single && b.Capabilities.FusedDecode;
            Tensor q = a.Q, k = a.K, v = a.V;
            // The rotary op as the q/k/v projection's epilogue where the backend says it pays off (plain tables; nobody
            // observing the unrotated projections).
            bool fusedRope = single && b.Capabilities.FusedRope && w.Qkv is not null && table.Remap is null && ProjectionObserver is null;
            // The o/down projections with the residual add and the next norm (whose scale the GEMV reading it applies).
            bool fusedNorm = single && b.Capabilities.FusedNorm;
            if (decode && w.Qkv is not null)
            {
                // One token: one matmul over the stacked q/k/v rows; q, k and v are column views of its output row.
                if (fusedRope) b.MatMulRope(a.Xb, w.Qkv, _act.Qkv, Cache, l, pos, table);
                else b.MatMul(a.Xb, w.Qkv, _act.Qkv);
                (q, k, v) = (_act.QkvQ, _act.QkvK, _act.QkvV);
            }
            else
            {
                b.MatMul(a.Xb, w.QProj, q);
                b.MatMul(a.Xb, w.KProj, k);
                b.MatMul(a.Xb, w.VProj, v);
            }
            R(q); R(k); R(v);
            ProjectionObserver?.Invoke(l, q, k);
            if (table.Remap is { } remap)
            {
                // Index remap: the far queries beside q; attention scores distant keys with them (against Cache.KFar).
                var qFar = _act.QFar!.SliceRows(0, tokens.Length);
                b.Rope(q, k, v, Cache, l, pos, table, Activations, qFar);
                R(q); R(qFar);
                b.Attention(q, Cache, l, pos, a.Att, Activations, new FarQueries(qFar, remap.Window));
            }
            else
            {
                if (!fusedRope)
                {
                    b.Rope(q, k, v, Cache, l, pos, table, Activations);
                    R(q);
                }
                b.Attention(q, Cache, l, pos, a.Att, Activations);
            }
            R(a.Att);
            if (fusedNorm)
            {
                b.MatMulAddRmsNorm(a.Att, w.OProj, a.X, w.PostAttentionLayernorm, a.Xb, eps);
            }
            else
            {
                b.MatMul(a.Att, w.OProj, a.Xb);
                Reduce(a.Xb);
                R(a.Xb);
                b.AddRmsNorm(a.X, a.Xb, w.PostAttentionLayernorm, a.Xb, eps, Activations);
                R(a.Xb);
            }

            Tensor gate = a.Gate, up = a.Up;
            if (decode && w.GateUp is not null && fused)
            {
                // One token: the stacked gate/up projection with SwiGlu as its epilogue (one launch on a GPU).
                b.MatMulSwiGlu(a.Xb, w.GateUp, gate);
            }
            else
            {
                if (decode && w.GateUp is not null)
                {
                    b.MatMul(a.Xb, w.GateUp, _act.GateUp);
                    (gate, up) = (_act.GateUpGate, _act.GateUpUp);
                }
                else
                {
                    b.MatMul(a.Xb, w.GateProj, gate);
                    b.MatMul(a.Xb, w.UpProj, up);
                }
                R(gate); R(up);
                b.SwiGlu(gate, up, gate, Activations);
                R(gate);
            }
            if (fusedNorm && l + 1 < Config.NumHiddenLayers)
            {
                b.MatMulAddRmsNorm(gate, w.DownProj, a.X, Weights.Layers[l + 1].InputLayernorm, a.Xb, eps);
                continue;
            }
            b.MatMul(gate, w.DownProj, a.Xb);
            Reduce(a.Xb);
            R(a.Xb);
            if (l + 1 < Config.NumHiddenLayers)
            {
                b.AddRmsNorm(a.X, a.Xb, Weights.Layers[l + 1].InputLayernorm, a.Xb, eps, Activations);
                R(a.Xb);
            }
            else
            {
                b.Add(a.X, a.Xb, a.X);   // the final norm takes only the rows whose logits are wanted
                R(a.X);
            }
        }
    }

    // Sums a partial output (this rank's heads or FFN slice) over the tensor-parallel group; no-op without one.
    private void Reduce(Tensor t)
    {
        if (Shard is { } s) s.Communicator.AllReduce(s.Rank, Backend, t);
    }

    // Rounds an activation to the compute type when emulating a bf16/f16 framework (no-op for F32).
    private void R(Tensor t)
    {
        if (Activations != DType.F32) Backend.Round(t, Activations);
    }

    public void Dispose()
    {
        _steps?.Dispose();
        _act?.Dispose();
        Cache.Dispose();
    }

    // Activation buffers, allocated once (DESIGN R7); Rows(n) hands out views of the first n rows.
    private sealed class Buffers : IDisposable
    {
        private readonly Tensor _x, _xb, _q, _k, _v, _att, _gate, _up;

        // ranks: the tensor-parallel group's size (0 without one).
        public Buffers(IBackend b, LlamaConfig c, int maxBatch, bool farQueries, int ranks)
        {
            QFar = farQueries ? b.Alloc(DType.F32, maxBatch, c.QDim) : null;   // [batch, heads * headDim] an index remap's far queries
            _x = b.Alloc(DType.F32, maxBatch, c.HiddenSize);          // [batch, hidden] residual stream
            _xb = b.Alloc(DType.F32, maxBatch, c.HiddenSize);         // [batch, hidden] normed input / branch output
            _q = b.Alloc(DType.F32, maxBatch, c.QDim);                // [batch, heads * headDim]
            _k = b.Alloc(DType.F32, maxBatch, c.KvDim);               // [batch, kvHeads * headDim]
            _v = b.Alloc(DType.F32, maxBatch, c.KvDim);               // [batch, kvHeads * headDim]
            _att = b.Alloc(DType.F32, maxBatch, c.QDim);              // [batch, heads * headDim] attention output
            _gate = b.Alloc(DType.F32, maxBatch, c.IntermediateSize); // [batch, ffn]
            _up = b.Alloc(DType.F32, maxBatch, c.IntermediateSize);   // [batch, ffn]
            LogitRows = Math.Max(1, Math.Min(maxBatch, (int)Math.Min(128, (64L << 20) / 4 / c.VocabSize)));
            Logits = b.Alloc(DType.F32, LogitRows, c.VocabSize);      // [LogitRows, vocab]
            LocalLogits = ranks > 0 ? b.Alloc(DType.F32, LogitRows, c.VocabSize / ranks) : null;   // [LogitRows, vocab / ranks] one rank's
            Qkv = b.Alloc(DType.F32, 1, c.QDim + 2 * c.KvDim);         // [1, q | k | v] one decoded token's projections
            GateUp = b.Alloc(DType.F32, 1, 2 * c.IntermediateSize);    // [1, gate | up]
            (QkvQ, QkvK, QkvV) = (Qkv.SliceCols(0, c.QDim), Qkv.SliceCols(c.QDim, c.KvDim), Qkv.SliceCols(c.QDim + c.KvDim, c.KvDim));
            (GateUpGate, GateUpUp) = (GateUp.SliceCols(0, c.IntermediateSize), GateUp.SliceCols(c.IntermediateSize, c.IntermediateSize));
        }

        public Tensor? QFar { get; }
        public Tensor? LocalLogits { get; }
        public Tensor Qkv { get; }
        public Tensor QkvQ { get; }
        public Tensor QkvK { get; }
        public Tensor QkvV { get; }
        public Tensor GateUp { get; }
        public Tensor GateUpGate { get; }
        public Tensor GateUpUp { get; }

        public int LogitRows { get; }
        public Tensor Logits { get; }

        public View Rows(int n) => new(_x.SliceRows(0, n), _xb.SliceRows(0, n), _q.SliceRows(0, n), _k.SliceRows(0, n),
            _v.SliceRows(0, n), _att.SliceRows(0, n), _gate.SliceRows(0, n), _up.SliceRows(0, n));

        public void Dispose()
        {
            foreach (var t in new[] { _x, _xb, _q, _k, _v, _att, _gate, _up, Logits, Qkv, GateUp }) t.Dispose();
            QFar?.Dispose();
            LocalLogits?.Dispose();
        }
    }

    private readonly record struct View(Tensor X, Tensor Xb, Tensor Q, Tensor K, Tensor V, Tensor Att, Tensor Gate, Tensor Up);
}

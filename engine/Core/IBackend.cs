// The whole contract between the forward pass (Model/Llama.cs) and a compute backend.
// Activations are F32 [tokens, features]; weights may be F32, F16 or BF16 [out, in]. Outputs come last.
// GPU backends run every op asynchronously on one stream; only Download, Argmax and Synchronize wait.
// `compute` (F32 unless a bf16/f16 framework is emulated) says which type the op rounds its intermediates to.

namespace LlamaRun.Core;

/// <summary>What a backend states about itself, so that callers never test its name.</summary>
/// <param name="PrefillChunk">Prompt tokens per forward chunk that reach the backend's full speed (llama-run's default -b).</param>
/// <param name="StackedDecodeProjections">One matmul over stacked q/k/v (and gate/up) weight rows pays off for a single token.</param>
/// <param name="DeviceMemory">Tensors live in accelerator memory, and FreeMemoryBytes counts that memory.</param>
/// <param name="IndexRemap">Rope and Attention take an index-remap table (Self-Extend, DPE, ReRoPE: RopeTable.Remap).</param>
/// <param name="FastIndexRemap">Attention runs an index remap at the speed of plain RoPE (so the default may pick one).</param>
/// <param name="FusedDecode">A decoded token's gate/up projection pays off as MatMulSwiGlu.</param>
/// <param name="FusedRope">A decoded token's stacked q/k/v projection pays off as MatMulRope.</param>
/// <param name="FusedNorm">A decoded token's o/down projections pay off as MatMulAddRmsNorm (with the residual add and the next norm).</param>
public sealed record BackendCapabilities(int PrefillChunk, bool StackedDecodeProjections, bool DeviceMemory, bool IndexRemap = false,
    bool FastIndexRemap = false, bool FusedDecode = false, bool FusedRope = false, bool FusedNorm = false);

/// <summary>
/// The far branch of an index-remap attention: queries rotated to their grouped positions (Q, shaped as the near
/// queries), and the window: keys at distance Window or more are scored with Q against the cache's KFar.
/// </summary>
public readonly record struct FarQueries(Tensor Q, int Window);

/// <summary>A buffer of the backend's memory kept for repeated pure-read measurements: the bound decode is judged against.</summary>
public interface IReadProbe : IDisposable
{
    /// <summary>Best read GB/s over `passes` passes over the buffer.</summary>
    double Measure(int passes = 8);

    /// <summary>What was measured, for the bench footnote ("1 GiB, 16 threads, best of 8").</summary>
    string Description { get; }
}

/// <summary>
/// Decode steps a backend replays instead of queuing their ops one by one (a GPU backend: a CUDA graph per key and
/// length bucket, its kernels reading the step's token and position from device memory). Made by
/// IBackend.CreateDecodeSteps for one caller, whose tensors the replays keep using until it is disposed.
/// </summary>
public interface IDecodeSteps : IDisposable
{
    /// <summary>
    /// Queues the step that `enqueue` queues, for one token at `position`: by running it, or by replaying what it queued
    /// for an earlier step of the same key. The key holds whatever else the ops depend on (the RoPE table, which logits
    /// are computed): steps of equal keys must queue the same ops on the same tensors. Inside enqueue only the ops that
    /// queue work may be called (no Download, Argmax, Synchronize, Alloc or Upload), and Embedding, Rope and Attention
    /// only for this token and position.
    /// </summary>
    void Run(int token, int position, object key, Action enqueue);
}

/// <summary>The ops a Llama forward pass needs, implemented once per device.</summary>
public interface IBackend : IDisposable
{
    /// <summary>The device name as --device takes it: "cpu", "cuda" or "ilgpu-cpu".</summary>
    string Name { get; }

    BackendCapabilities Capabilities { get; }

    /// <summary>Human-readable device description for logs.</summary>
    string Device { get; }

    /// <summary>Bytes of one KV-cache element on this backend (4 for F32, 2 for BF16).</summary>
    int KvElementSize { get; }

    /// <summary>Memory free for new allocations, in bytes (0 when unknown).</summary>
    long FreeMemoryBytes { get; }

    /// <summary>
    /// Waits until the backend can run every op, throwing what stops it (a GPU backend compiles its kernels in the
    /// background, so that weights load meanwhile). Ops may be called before; they wait for what they need.
    /// </summary>
    void WaitUntilReady()
    {
    }

    /// <summary>Allocates a zero-filled [rows, cols] tensor.</summary>
    Tensor Alloc(DType dtype, int rows, int cols);

    /// <summary>Makes a tensor of host data; the CPU backend may alias it, so keep hostData alive as long as the tensor.</summary>
    Tensor Upload(DType dtype, int rows, int cols, nint hostData);

    /// <summary>Copies a tensor to host memory as F32 (bf16 and f16 widened exactly), after all queued work.</summary>
    void Download(Tensor src, Span<float> dst);

    /// <summary>
    /// Allocates the KV cache; the backend picks its element type (F32 on CPU, BF16 on CUDA unless in full precision).
    /// farKeys: also the grouped keys an index-remap RoPE scores distant queries against (KvCache.KFar).
    /// </summary>
    KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim, bool farKeys = false);

    /// <summary>dst[t, :] = table[tokens[t], :] as F32; dst is [tokens.Length, hidden].</summary>
    void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst);

    /// <summary>dst[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight (weight F32 [1, n]); a non-F32 compute rounds the normalized x and the product.</summary>
    void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32);

    /// <summary>The residual add fused with the next norm: x += y (rounded to a non-F32 compute type), then dst = RmsNorm(x); dst may alias y.</summary>
    void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32);

    /// <summary>dst[T, out] = x[T, in] times weight[out, in] transposed.</summary>
    void MatMul(Tensor x, Tensor weight, Tensor dst);

    /// <summary>
    /// A projection, the residual add and the next norm in one op (f32 compute): residual += x weight^T, then dst =
    /// RmsNorm(residual) times normWeight; equal to MatMul into dst then AddRmsNorm(residual, dst, normWeight, dst).
    /// A GPU backend may leave the norm's scale to the MatMulRope or MatMulSwiGlu that reads dst next (no launch of
    /// its own for a decoded token); every other op sees dst normed.
    /// </summary>
    void MatMulAddRmsNorm(Tensor x, Tensor weight, Tensor residual, Tensor normWeight, Tensor dst, float eps)
    {
        MatMul(x, weight, dst);
        AddRmsNorm(residual, dst, normWeight, dst, eps);
    }

    /// <summary>
    /// The MLP's input projections and SwiGlu in one op (f32 compute): with gateUp the gate rows then the up rows
    /// [2 ff, in], dst[T, ff] = silu(x gate^T) * (x up^T), equal to MatMul into [T, 2 ff] then SwiGlu of its halves.
    /// </summary>
    void MatMulSwiGlu(Tensor x, Tensor gateUp, Tensor dst);

    /// <summary>
    /// The stacked q/k/v projection and Rope in one op (f32 compute, no index remap): dst[T, qDim + 2 kvDim] = x qkv^T,
    /// then Rope of its q, k and v columns (q and k rotated in place, k and v stored in layer's cache at startPos..);
    /// equal to MatMul into dst then Rope of its column views (one launch on a GPU for a token).
    /// </summary>
    void MatMulRope(Tensor x, Tensor qkv, Tensor dst, KvCache cache, int layer, int startPos, RopeTable table) =>
        MatMulThenRope(this, x, qkv, dst, cache, layer, startPos, table);

    /// <summary>MatMulRope as its two ops: MatMul into dst, then Rope of each token's q, k and v columns.</summary>
    static void MatMulThenRope(IBackend b, Tensor x, Tensor qkv, Tensor dst, KvCache cache, int layer, int startPos, RopeTable table)
    {
        int kvDim = cache.KvDim, qDim = dst.Cols - 2 * kvDim;
        if (qDim <= 0 || qDim % cache.HeadDim != 0)
            throw new ArgumentException($"dst {dst} is not [T, qDim + 2 x {kvDim}] for the cache's {cache.NumKvHeads} KV heads of {cache.HeadDim}", nameof(dst));
        if (table.Remap is not null) throw new ArgumentException($"MatMulRope takes no index remap (table '{table.Method}')", nameof(table));
        b.MatMul(x, qkv, dst);
        for (int t = 0; t < dst.Rows; t++)
        {
            var row = dst.SliceRows(t, 1);
            b.Rope(row.SliceCols(0, qDim), row.SliceCols(qDim, kvDim), row.SliceCols(qDim + kvDim, kvDim), cache, layer, startPos + t, table);
        }
    }

    /// <summary>
    /// Rotates q [T, heads*headDim] in place (cos/sin magnitude and query scale included), rotates k [T, kvDim] in place,
    /// and stores k and v at positions startPos..startPos+T-1 of layer's cache. Pairs are (x[j], x[j + rotaryDim/2]).
    /// A non-F32 compute rounds cos, sin, each product and each sum to that type. With an index remap (table.Remap) it
    /// also writes qFar (q at its grouped positions, scaled alike) and the keys at their grouped positions to cache.KFar.
    /// </summary>
    void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32, Tensor? qFar = null);

    /// <summary>
    /// Causal grouped-query attention of q [T, heads*headDim] (query t at position startPos+t) over the cached
    /// positions 0..startPos+t of layer, softmax scale 1/sqrt(headDim); dst is [T, heads*headDim].
    /// A non-F32 compute rounds the unnormalized probabilities before they weight V, as torch's CPU flash kernel does.
    /// far: an index remap's far branch; keys at distance far.Window or more are scored with far.Q against cache.KFar.
    /// </summary>
    void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32, FarQueries? far = null);

    /// <summary>Re-rotates the first `length` cached keys of every layer from table `from` to table `to`.</summary>
    void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to);

    /// <summary>dst = silu(gate) * up, element-wise; a non-F32 compute rounds silu(gate) and the product.</summary>
    void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32);

    /// <summary>dst = x + y, element-wise (dst may alias x).</summary>
    void Add(Tensor x, Tensor y, Tensor dst);

    /// <summary>Rounds an F32 tensor in place to the nearest value of dtype (nearest even), as a bf16/f16 framework would store it.</summary>
    void Round(Tensor x, DType dtype);

    /// <summary>Index of the largest element of each row of x, first on ties; waits for queued work.</summary>
    void Argmax(Tensor x, Span<int> dst);

    /// <summary>Waits for all queued work.</summary>
    void Synchronize();

    /// <summary>Decode steps this backend replays, for one caller (disposed with it); null where every step queues its ops anew.</summary>
    IDecodeSteps? CreateDecodeSteps() => null;
}

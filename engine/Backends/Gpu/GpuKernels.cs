// Typed launchers, one per kernel family (DESIGN R3, layer 2): every kernel of kernels/ is compiled and loaded once at
// start-up into a typed delegate; each launcher computes grid, group and shared memory at the call, picks the variant
// and queues it on the backend's stream. No synchronisation unless LLAMA_SYNC=1, which waits after every launch and
// names the kernel that failed. Exercised by tests/GpuOpsTests.cs through GpuBackend.
using ILGPU;
using ILGPU.Runtime;
using LlamaRun.Core;
using LlamaRun.Kernels;
using LlamaRun.Kernels.Device;
using Stream = ILGPU.Runtime.AcceleratorStream;
using F32 = ILGPU.ArrayView<float>;
using U16 = ILGPU.ArrayView<ushort>;

namespace LlamaRun.Backends.Gpu;

/// <summary>One queued kernel launch: its name and configuration (for errors) and the launch itself.</summary>
internal readonly record struct RecordedLaunch(string Name, KernelConfig Config, Action<Stream> Launch);

internal sealed class GpuKernels
{
    // An integer tuning setting from the environment: its value where valid, else the default.
    private static int Tuning(string name, int fallback, Func<int, bool> valid) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int v) && valid(v) ? v : fallback;

    // Queries per flash-attention group: 64 (4 warps, default) or 128 (8 warps, LLAMA_FLASH_ROWS=128).
    private static readonly bool FlashRows128 = Environment.GetEnvironmentVariable("LLAMA_FLASH_ROWS") == "128";
    private static readonly int FlashWarps = FlashRows128 ? 8 : 4;

    // 4-warp flash groups per SM: 2 (up to 255 registers, the default: measured 2-4% faster at 4k-16k prefill on H200)
    // or 3 (LLAMA_FLASH_BLOCKS=3: registers capped at 168).
    private static readonly int FlashBlocks = Environment.GetEnvironmentVariable("LLAMA_FLASH_BLOCKS") == "3" ? 3 : 2;

    // Decode split-K: most groups an SM (LLAMA_ATTN_WAVES overrides, for tuning); fewer where the kernel's occupancy is lower.
    private static readonly int SplitWaves = Tuning("LLAMA_ATTN_WAVES", 8, w => w is > 0 and <= 64);

    // Decode split-K: fewest keys a split (LLAMA_ATTN_MINSPLIT overrides, for tuning). Shorter splits cost more in the
    // combine than they gain (H200, Llama-3-8B decode at 16k: 130 us with 128 keys, 87 with 256, with the serial combine).
    private static readonly int MinSplit = Tuning("LLAMA_ATTN_MINSPLIT", 256, m => m is >= 16 and <= 65536);

    // Decode attention with one query head a lane: its key tile (LLAMA_ATTN_TILE=full, for tuning: the four-step tiles
    // whose keys all lie inside the split without guards).
    private static readonly DecodeTile DecodeTileSetting =
        Environment.GetEnvironmentVariable("LLAMA_ATTN_TILE") == "full" ? DecodeTile.FullFour : DecodeTile.Four;

    // Decode attention with one query head a lane: groups an SM its registers are capped for (LLAMA_ATTN_BLOCKS, for
    // tuning: more warps an SM, each with its tile's loads in flight; 0: no cap). With a cap its groups are 4 warps.
    private static readonly int DecodeBlocks = Tuning("LLAMA_ATTN_BLOCKS", 0, b => b is >= 0 and <= 16);

    // Decode attention kernel: warps a group (LLAMA_ATTN_DECODE_WARPS, for tuning; 0: DecodeWarpsFor picks).
    private static readonly int DecodeWarps = Tuning("LLAMA_ATTN_DECODE_WARPS", 0, w => w is 0 or 1 or 2 or 4 or 8 or 16 or 32);

    /// <summary>
    /// Warps a decode-attention group: 4, or more where the groups are few (a short context, whose keys each warp would
    /// otherwise walk one step after another) while groups x warps x the query heads a lane holds (the variant) stay
    /// within 32 warps an SM; LLAMA_ATTN_DECODE_WARPS overrides. H100, Llama-2-7B shape (one query head a lane):
    /// tg128 204.92 / 205.66 t/s against 203.74 / 203.40 with 4 warps always (206.38 / 206.17 against 204.55 / 204.28
    /// with 8 forced, on another card); depth 4096 173.07 against 172.61 (its steps past 4,096 keys have 640 groups,
    /// so 4 warps; 8 forced measured 175.21 against 173.25); depth 16384 (736 groups, 4 warps) 127.91 against 127.71,
    /// where 8 forced lost (123.24 against 128.18). Kernel table, 4 / 8 / 16 warps: Llama-3-8B decode at 4k 31.3 /
    /// 22.3 / 19.8 us (picked: 8, 22.9), at 16k 47.3 / 52.6 / 65.0 (picked: 4); Llama-3-70B at 16k 119.9 / 135.8 / 136.8
    /// (picked: 4).
    /// </summary>
    internal static int DecodeWarpsFor(long groups, int variant, int multiprocessors)
    {
        if (DecodeBlocks > 0 && variant == 1) return AttentionDecodeKernels.Warps;
        if (DecodeWarps > 0) return DecodeWarps;
        int warps = AttentionDecodeKernels.Warps;
        while (warps < 16 && groups * 2 * warps * variant <= 32L * multiprocessors) warps *= 2;
        return warps;
    }

    // Decode GEMV: rows (warps) a group, and groups an SM its registers are capped for (LLAMA_GEMV_ROWS,
    // LLAMA_GEMV_BLOCKS, for tuning; 0 blocks: no cap).
    private static readonly int GemvRows = Tuning("LLAMA_GEMV_ROWS", MatMulKernels.GemvRowsPerGroup, r => r is 1 or 2 or 4 or 8 or 16 or 32);
    private static readonly int GemvBlocks = Tuning("LLAMA_GEMV_BLOCKS", 0, b => b is >= 0 and <= 32);

    // Decode GEMV of long rows (more than GemvLongRow weights) by gemv_bf16_long (LLAMA_GEMV_LONG=0: by gemv_bf16, for tuning).
    private static readonly bool GemvLong = Environment.GetEnvironmentVariable("LLAMA_GEMV_LONG") != "0";

    private readonly Stream _stream;
    private readonly bool _sync;
    private readonly int _maxGroup, _multiprocessors;
    private readonly int _scratchBytes;   // the tensor-core emulation's shared scratch (ILGPU's CPU accelerator only)
    private readonly int _rowsPerGemvGroup; // GemvRowsPerGroup on a GPU; 1 where every warp barrier wakes all of a group's threads (CPU accelerator)

    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<int>, F32, F32, int, int>> _embeddingF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<int>, U16, F32, int, int>> _embeddingBf16, _embeddingF16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, int, float>> _rmsNorm;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, int, float>>? _rmsNormBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>> _rmsNorm4;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>? _rmsNorm4Bf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, F32, int, float>> _addRmsNorm;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, F32, int, float>>? _addRmsNormBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>> _addRmsNorm4;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>? _addRmsNorm4Bf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, int, int>> _gemvBf16, _gemvBf16Long;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, ArrayView<ulong>, DeferredNorm, int, int>> _gemvBf16SwiGlu;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, F32, F32, ArrayView<ulong>, int, int>> _gemvBf16AddNorm, _gemvBf16AddNormLong;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, ArrayView<ulong>, DeferredNorm, int>> _scaleDeferred;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, int, int, int>> _gemvF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, U16, U16, F32, ArrayView<int>, RopeArgs, ArrayView<ulong>, DeferredNorm, int>>? _gemvBf16Rope;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, U16, F32, int, int, int>> _gemvBf16Any, _gemvF16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, U16, F32, int, int, int>>? _gemmBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, U16, long, int>> _toBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, U16, F32, long>>? _widenBf16, _widenF16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, long>>? _roundBf16, _roundF16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, U16, U16, F32, ArrayView<int>, RopeArgs>>? _rope, _ropeBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs>>? _ropeCacheF32, _ropeBf16CacheF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, U16, F32, F32, int, int, int, int, float, float>>? _rerotate;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, int, int, int, int, float, float>>? _rerotateF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, U16, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>? _ropeFar, _ropeFarBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>? _ropeFarCacheF32, _ropeFarBf16CacheF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, U16, U16, F32, F32, F32, U16, ArrayView<int>, AttentionArgs>>? _split;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, F32, ArrayView<int>, AttentionArgs>>? _splitF32;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, int, int, int>> _combine;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>? _flash64, _flash128, _flash64Far, _flash64Near, _flash128Far, _flash128Near;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, StreamedU4, F32, F32, ArrayView<F4>, StreamedU4, ArrayView<int>, AttentionArgs>>? _decode1, _decode2, _decode4, _decode8;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, long, int>> _swiGlu, _add;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, F32, F32, long, int>>? _swiGluBf16;
    private readonly KernelHandle<Action<Stream, KernelConfig, F32, ArrayView<int>, int>> _argmax;
    private readonly KernelHandle<Action<Stream, KernelConfig, ArrayView<U4>, ArrayView<uint>>> _read;

    /// <summary>
    /// Loads the core kernels plus the optional variants of set; f32Cache: the full-precision variants (an f32 KV
    /// cache, exact f32 matmuls) instead of the bf16-cache ones; gemm: our tensor-core GEMM (where cuBLAS is absent).
    /// emulated: the accelerator runs the tensor-core helpers' C# paths (ILGPU's CPU accelerator).
    /// </summary>
    public GpuKernels(IKernelLoader l, Stream stream, int maxGroup, int multiprocessors, GpuKernelSet set, bool f32Cache, bool gemm,
        bool emulated, bool sync, DecodeTile decodeTile = DecodeTile.Setting)
    {
        _scratchBytes = emulated ? EmulatedTensorCores.ScratchBytes : 0;
        _rowsPerGemvGroup = emulated ? 1 : GemvRows;
        _stream = stream;
        _maxGroup = maxGroup;
        _multiprocessors = multiprocessors;
        _sync = sync;
        bool bf16 = set.Bf16Compute;
        if (!f32Cache)
        {
            // First: flash attention takes the driver longest to compile, which then overlaps ILGPU's work on the rest.
            var flashNeeds = emulated ? KernelNeeds.None : KernelNeeds.Mma | KernelNeeds.Ldmatrix;
            // Launch bounds: FlashBlocks 4-warp groups per SM, or one 8-warp group.
            var bounds = FlashRows128 ? new KernelSpecialization(256, 1) : new KernelSpecialization(128, FlashBlocks);
            int shared64 = 2 * AttentionFlashKernels.SharedElements(64, FlashWarps), shared128 = 2 * AttentionFlashKernels.SharedElements(128, FlashWarps);
            if (set.Flash(64))
            {
                _flash64 = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_hd64",
                    Flash<FlashHd64, FlashHd64Q128, PlainPass>(emulated), flashNeeds, bounds, shared64);
                if (set.Remap)
                {
                    _flash64Far = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_far_hd64",
                        Flash<FlashHd64, FlashHd64Q128, FarPass>(emulated), flashNeeds, bounds, shared64);
                    _flash64Near = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_near_hd64",
                        Flash<FlashHd64, FlashHd64Q128, NearPass>(emulated), flashNeeds, bounds, shared64);
                }
            }
            if (set.Flash(128))
            {
                _flash128 = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_hd128",
                    Flash<FlashHd128, FlashHd128Q128, PlainPass>(emulated), flashNeeds, bounds, shared128);
                if (set.Remap)
                {
                    _flash128Far = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_far_hd128",
                        Flash<FlashHd128, FlashHd128Q128, FarPass>(emulated), flashNeeds, bounds, shared128);
                    _flash128Near = l.Load<Action<Stream, KernelConfig, F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32>>("attention_flash_near_hd128",
                        Flash<FlashHd128, FlashHd128Q128, NearPass>(emulated), flashNeeds, bounds, shared128);
                }
            }
        }
        _embeddingF32 = l.Load<Action<Stream, KernelConfig, ArrayView<int>, F32, F32, int, int>>("embedding_f32", EmbeddingKernels.Embedding<float, F32Element>);
        _embeddingBf16 = l.Load<Action<Stream, KernelConfig, ArrayView<int>, U16, F32, int, int>>("embedding_bf16", EmbeddingKernels.Embedding<ushort, Bf16Element>);
        _embeddingF16 = l.Load<Action<Stream, KernelConfig, ArrayView<int>, U16, F32, int, int>>("embedding_f16", EmbeddingKernels.Embedding<ushort, F16Element>);
        _rmsNorm = l.Load<Action<Stream, KernelConfig, F32, F32, F32, int, float>>("rmsnorm", RmsNormKernels.RmsNorm<NoRounding>);
        _rmsNorm4 = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>("rmsnorm4", RmsNormKernels.RmsNorm4<NoRounding>);
        _addRmsNorm = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, int, float>>("add_rmsnorm", RmsNormKernels.AddRmsNorm<NoRounding>);
        _addRmsNorm4 = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>("add_rmsnorm4", RmsNormKernels.AddRmsNorm4<NoRounding>);
        if (bf16)
        {
            _rmsNormBf16 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, int, float>>("rmsnorm_cbf16", RmsNormKernels.RmsNorm<Bf16Rounding>);
            _rmsNorm4Bf16 = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>("rmsnorm4_cbf16", RmsNormKernels.RmsNorm4<Bf16Rounding>);
            _addRmsNormBf16 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, int, float>>("add_rmsnorm_cbf16", RmsNormKernels.AddRmsNorm<Bf16Rounding>);
            _addRmsNorm4Bf16 = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, ArrayView<F4>, int, float>>("add_rmsnorm4_cbf16", RmsNormKernels.AddRmsNorm4<Bf16Rounding>);
            _roundBf16 = l.Load<Action<Stream, KernelConfig, F32, long>>("round_bf16", RoundKernels.Round<Bf16Element>);
            _roundF16 = l.Load<Action<Stream, KernelConfig, F32, long>>("round_f16", RoundKernels.Round<F16Element>);
            _swiGluBf16 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, long, int>>("swiglu_cbf16", ActivationKernels.SwiGlu<Bf16Rounding>);
        }
        var streamed = emulated ? KernelNeeds.None : KernelNeeds.StreamedLoads;
        _gemvBf16 = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, int, int>>("gemv_bf16", MatMulKernels.GemvBf16<SixteenLoads>, streamed,
            specialization: GemvBlocks > 0 && !emulated ? new KernelSpecialization(32 * GemvRows, GemvBlocks) : default);
        // Rows longer than one block of sixteen loads a lane: eight loads, registers capped for 32 warps an SM.
        _gemvBf16Long = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, int, int>>("gemv_bf16_long", MatMulKernels.GemvBf16<EightLoads>, streamed,
            specialization: emulated ? default : new KernelSpecialization(32 * GemvRows, 32 / GemvRows));
        _gemvBf16SwiGlu = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, ArrayView<ulong>, DeferredNorm, int, int>>(
            "gemv_bf16_swiglu", MatMulKernels.GemvBf16SwiGlu, streamed);
        if (!f32Cache)
            _gemvBf16Rope = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, U16, U16, F32, ArrayView<int>, RopeArgs, ArrayView<ulong>, DeferredNorm, int>>(
                "gemv_bf16_rope", MatMulKernels.GemvBf16Rope, streamed);
        // The o/down projections with the residual add and the next norm's sum of squares (launched as the GEMVs are).
        _gemvBf16AddNorm = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, F32, F32, ArrayView<ulong>, int, int>>(
            "gemv_bf16_add_norm", MatMulKernels.GemvBf16AddNorm<SixteenLoads>, streamed,
            specialization: GemvBlocks > 0 && !emulated ? new KernelSpecialization(32 * GemvRows, GemvBlocks) : default);
        _gemvBf16AddNormLong = l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, F32, F32, F32, ArrayView<ulong>, int, int>>(
            "gemv_bf16_add_norm_long", MatMulKernels.GemvBf16AddNorm<EightLoads>, streamed,
            specialization: emulated ? default : new KernelSpecialization(32 * GemvRows, 32 / GemvRows));
        _scaleDeferred = l.Load<Action<Stream, KernelConfig, F32, ArrayView<ulong>, DeferredNorm, int>>("scale_deferred_norm", RmsNormKernels.ScaleDeferred);
        _gemvF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, int, int, int>>("gemv_f32", MatMulKernels.Gemv<float, F32Element>);
        _gemvBf16Any = l.Load<Action<Stream, KernelConfig, F32, U16, F32, int, int, int>>("gemv_bf16_any", MatMulKernels.Gemv<ushort, Bf16Element>);
        _gemvF16 = l.Load<Action<Stream, KernelConfig, F32, U16, F32, int, int, int>>("gemv_f16", MatMulKernels.Gemv<ushort, F16Element>);
        if (gemm && !f32Cache)
            _gemmBf16 = l.Load<Action<Stream, KernelConfig, F32, U16, F32, int, int, int>>("gemm_bf16",
                emulated ? MatMulKernels.GemmBf16<EmulatedTensorCores> : MatMulKernels.GemmBf16<PtxTensorCores>, emulated ? KernelNeeds.None : KernelNeeds.Mma,
                dynamicShared: MatMulKernels.GemmSharedBytes);
        _toBf16 = l.Load<Action<Stream, KernelConfig, F32, U16, long, int>>("to_bf16", RoundKernels.ToBf16);
        if (f32Cache)
        {
            _widenBf16 = l.Load<Action<Stream, KernelConfig, U16, F32, long>>("widen_bf16", RoundKernels.Widen<Bf16Element>);
            _widenF16 = l.Load<Action<Stream, KernelConfig, U16, F32, long>>("widen_f16", RoundKernels.Widen<F16Element>);
            _ropeCacheF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs>>("rope_cf32", RopeKernels.Rope<NoRounding, float, F32Element>);
            if (bf16) _ropeBf16CacheF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs>>("rope_cbf16_cf32", RopeKernels.Rope<Bf16Rounding, float, F32Element>);
            _rerotateF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, int, int, int, int, float, float>>("rerotate_cf32", RopeKernels.Rerotate<float, F32Element>);
            _splitF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, F32, ArrayView<int>, AttentionArgs>>("attention_split_cf32", AttentionKernels.Split<float, F32Element>);
            if (set.Remap)
            {
                _ropeFarCacheF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>("rope_far_cf32", RopeKernels.RopeFar<NoRounding, float, F32Element>);
                if (bf16) _ropeFarBf16CacheF32 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, F32, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>("rope_far_cbf16_cf32", RopeKernels.RopeFar<Bf16Rounding, float, F32Element>);
            }
        }
        else
        {
            _rope = l.Load<Action<Stream, KernelConfig, F32, F32, F32, U16, U16, F32, ArrayView<int>, RopeArgs>>("rope", RopeKernels.Rope<NoRounding, ushort, Bf16Element>);
            if (bf16) _ropeBf16 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, U16, U16, F32, ArrayView<int>, RopeArgs>>("rope_cbf16", RopeKernels.Rope<Bf16Rounding, ushort, Bf16Element>);
            _rerotate = l.Load<Action<Stream, KernelConfig, U16, F32, F32, int, int, int, int, float, float>>("rerotate", RopeKernels.Rerotate<ushort, Bf16Element>);
            _split = l.Load<Action<Stream, KernelConfig, F32, U16, U16, F32, F32, F32, U16, ArrayView<int>, AttentionArgs>>("attention_split", AttentionKernels.Split<ushort, Bf16Element>);
            if (set.Remap)
            {
                _ropeFar = l.Load<Action<Stream, KernelConfig, F32, F32, F32, U16, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>("rope_far", RopeKernels.RopeFar<NoRounding, ushort, Bf16Element>);
                if (bf16) _ropeFarBf16 = l.Load<Action<Stream, KernelConfig, F32, F32, F32, U16, F32, F32, ArrayView<int>, RopeArgs, int, int, int>>("rope_far_cbf16", RopeKernels.RopeFar<Bf16Rounding, ushort, Bf16Element>);
            }
            var decodeCap = DecodeBlocks > 0 && !emulated ? new KernelSpecialization(32 * AttentionDecodeKernels.Warps, DecodeBlocks) : default;
            if (set.Decode(1))
            {
                _decode1 = (decodeTile == DecodeTile.Setting ? DecodeTileSetting : decodeTile) switch
                {
                    DecodeTile.FullFour => LoadDecode(l, "attention_decode_g1", AttentionDecodeKernels.Decode<OneQueryHead, FullFourSteps>, streamed, decodeCap),
                    _ => LoadDecode(l, "attention_decode_g1", AttentionDecodeKernels.Decode<OneQueryHead, FourSteps>, streamed, decodeCap),
                };
            }
            if (set.Decode(2)) _decode2 = LoadDecode(l, "attention_decode_g2", AttentionDecodeKernels.Decode<TwoQueryHeads>, streamed);
            if (set.Decode(4)) _decode4 = LoadDecode(l, "attention_decode_g4", AttentionDecodeKernels.Decode<FourQueryHeads>, streamed);
            if (set.Decode(8)) _decode8 = LoadDecode(l, "attention_decode_g8", AttentionDecodeKernels.Decode<EightQueryHeads>, streamed);
        }
        _combine = l.Load<Action<Stream, KernelConfig, F32, F32, int, int, int>>("attention_combine", AttentionKernels.Combine);
        _swiGlu = l.Load<Action<Stream, KernelConfig, F32, F32, F32, long, int>>("swiglu", ActivationKernels.SwiGlu<NoRounding>);
        _add = l.Load<Action<Stream, KernelConfig, F32, F32, F32, long, int>>("add", ActivationKernels.Add);
        _argmax = l.Load<Action<Stream, KernelConfig, F32, ArrayView<int>, int>>("argmax", ArgmaxKernels.Argmax);
        _read = l.Load<Action<Stream, KernelConfig, ArrayView<U4>, ArrayView<uint>>>("memory_read", MemoryReadKernels.Read);
    }

    private static KernelHandle<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, StreamedU4, F32, F32, ArrayView<F4>, StreamedU4, ArrayView<int>, AttentionArgs>> LoadDecode(IKernelLoader l, string name,
        Action<ArrayView<F4>, StreamedU4, StreamedU4, F32, F32, ArrayView<F4>, StreamedU4, ArrayView<int>, AttentionArgs> kernel, KernelNeeds needs,
        KernelSpecialization specialization = default) =>
        l.Load<Action<Stream, KernelConfig, ArrayView<F4>, StreamedU4, StreamedU4, F32, F32, ArrayView<F4>, StreamedU4, ArrayView<int>, AttentionArgs>>(name, kernel, needs, specialization);

    // The flash variant of a head dim (64-query groups, or 128 with LLAMA_FLASH_ROWS=128) for the accelerator's tensor cores.
    private static Action<F32, ArrayView<U4>, ArrayView<U4>, F32, int, int, int, int, float, int, F32> Flash<T64, T128, TP>(bool emulated)
        where T64 : struct, IFlashShape
        where T128 : struct, IFlashShape
        where TP : struct, IFlashPass =>
        (FlashRows128, emulated) switch
        {
            (false, false) => AttentionFlashKernels.Flash<T64, PtxTensorCores, TP>,
            (false, true) => AttentionFlashKernels.Flash<T64, EmulatedTensorCores, TP>,
            (true, false) => AttentionFlashKernels.Flash<T128, PtxTensorCores, TP>,
            (true, true) => AttentionFlashKernels.Flash<T128, EmulatedTensorCores, TP>,
        };

    // An optional variant, or a clear error naming it (the backend was created without it).
    private static T Need<T>(KernelHandle<T>? kernel, string name) where T : Delegate =>
        kernel?.Launch ?? throw new GpuException($"kernel {name} was not loaded: this backend was created for other shapes or another compute mode");

    /// <summary>
    /// Where launches go instead of the stream while a decode step is recorded (ILGPU's CPU accelerator, which has no
    /// CUDA graphs: the recording is replayed as a graph would be, with the arguments of the recorded step); null: launch.
    /// </summary>
    public List<RecordedLaunch>? Recording { get; set; }

    // Queues one launch, or records it; names the kernel on failure.
    private void Queue(string name, KernelConfig config, Action<Stream> launch)
    {
        if (Recording is { } recording) recording.Add(new RecordedLaunch(name, config, launch));
        else Run(new RecordedLaunch(name, config, launch));
    }

    /// <summary>Launches on the stream, naming the kernel on failure; with LLAMA_SYNC=1 waits for it and names it on failure.</summary>
    public void Run(RecordedLaunch launch)
    {
        try
        {
            launch.Launch(_stream);
        }
        catch (Exception e) when (e is not GpuException)
        {
            throw Failed(launch.Name, launch.Config, e);
        }
        if (!_sync) return;
        try
        {
            _stream.Synchronize();
        }
        catch (Exception e)
        {
            throw new GpuException($"{e.Message.Split('\n')[0]}: in kernel {launch.Name} (LLAMA_SYNC=1)", e);
        }
    }

    private static GpuException Failed(string name, KernelConfig config, Exception e) =>
        new($"launching {name} grid {config.GridDim} group {config.GroupDim}: {e.Message.Split('\n')[0]}", e);

    // Groups for a grid-stride loop over n elements with `group` threads.
    private static int Groups(long n, int group) => (int)Math.Clamp((n + group - 1) / group, 1, 65535L * 16);

    private int GroupSize(int wanted) => Math.Min(wanted, _maxGroup);

    public void Embedding(ArrayView<int> tokens, Tensor table, F32 dst, int numTokens, int hidden)
    {
        int group = GroupSize(256);
        var config = new KernelConfig(new Index3D((hidden + group - 1) / group, Math.Min(numTokens, 65535), 1), new Index3D(group, 1, 1));
        string name = table.DType switch { DType.F32 => "embedding_f32", DType.F16 => "embedding_f16", _ => "embedding_bf16" };
        if (table.DType == DType.F32)
        {
            var f32 = GpuViews.F32(table);
            Queue(name, config, s => _embeddingF32.Launch(s, config, tokens, f32, dst, numTokens, hidden));
        }
        else
        {
            var kernel = (table.DType == DType.F16 ? _embeddingF16 : _embeddingBf16).Launch;
            var u16 = GpuViews.U16(table);
            Queue(name, config, s => kernel(s, config, tokens, u16, dst, numTokens, hidden));
        }
    }

    // Threads a norm group (a row of n, perThread elements a thread and loop step): for fewer rows than SMs (a decoded
    // token) one step a thread up to the largest group, so a thread's loads are one round trip instead of one a loop
    // step (H100, Llama-2-7B shape, tg128 204.31 / 204.19 t/s against 199.98 / 200.23 with 256 threads, depth 16384
    // 128.23 against 125.80); else 256 (512 for rows of 8192 or more). LLAMA_NORM_WIDE=0: 256 / 512 always, for tuning.
    private static readonly bool WideNorm = Environment.GetEnvironmentVariable("LLAMA_NORM_WIDE") != "0";

    private int NormGroup(int rows, int n, int perThread)
    {
        if (!WideNorm || rows >= _multiprocessors) return GroupSize(n >= 8192 ? 512 : 256);
        return GroupSize(Math.Max(32, ((n + perThread - 1) / perThread + 31) / 32 * 32));
    }

    // bf16: the variants that round intermediates as a bf16 framework does (here and in Rope, SwiGlu, Attention).
    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, int rows, int n, float eps, bool bf16)
    {
        bool vector = n % 4 == 0 && GpuViews.Aligned16(x, weight, dst);
        var config = new KernelConfig(rows, NormGroup(rows, n, vector ? 4 : 1));
        string name = (vector ? "rmsnorm4" : "rmsnorm") + (bf16 ? "_cbf16" : "");
        if (vector)
        {
            var kernel = bf16 ? Need(_rmsNorm4Bf16, name) : _rmsNorm4.Launch;
            var (x4, w4, d4) = (GpuViews.F4(x), GpuViews.F4(weight), GpuViews.F4(dst));
            Queue(name, config, s => kernel(s, config, x4, w4, d4, n / 4, eps));
        }
        else
        {
            var kernel = bf16 ? Need(_rmsNormBf16, name) : _rmsNorm.Launch;
            var (x1, w1, d1) = (GpuViews.F32(x), GpuViews.F32(weight), GpuViews.F32(dst));
            Queue(name, config, s => kernel(s, config, x1, w1, d1, n, eps));
        }
    }

    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, int rows, int n, float eps, bool bf16)
    {
        bool vector = n % 4 == 0 && GpuViews.Aligned16(x, y, weight, dst);
        var config = new KernelConfig(rows, NormGroup(rows, n, vector ? 4 : 1));
        string name = (vector ? "add_rmsnorm4" : "add_rmsnorm") + (bf16 ? "_cbf16" : "");
        if (vector)
        {
            var kernel = bf16 ? Need(_addRmsNorm4Bf16, name) : _addRmsNorm4.Launch;
            var (x4, y4, w4, d4) = (GpuViews.F4(x), GpuViews.F4(y), GpuViews.F4(weight), GpuViews.F4(dst));
            Queue(name, config, s => kernel(s, config, x4, y4, w4, d4, n / 4, eps));
        }
        else
        {
            var kernel = bf16 ? Need(_addRmsNormBf16, name) : _addRmsNorm.Launch;
            var (x1, y1, w1, d1) = (GpuViews.F32(x), GpuViews.F32(y), GpuViews.F32(weight), GpuViews.F32(dst));
            Queue(name, config, s => kernel(s, config, x1, y1, w1, d1, n, eps));
        }
    }

    /// <summary>dst[T, out] = x[T, in] * weight^T for T &lt;= 8 tokens: one warp per output row (bf16: one launch a token).</summary>
    public void Gemv(Tensor x, Tensor weight, Tensor dst, int tokens, int inDim, int outDim)
    {
        var config = GemvConfig(outDim);
        bool vector = GemvBf16Fits(x, weight), longRows = vector && LongRows(inDim);
        string name = longRows ? "gemv_bf16_long" : vector ? "gemv_bf16"
            : weight.DType switch { DType.F32 => "gemv_f32", DType.F16 => "gemv_f16", _ => "gemv_bf16_any" };
        if (vector)
        {
            var w4 = GpuViews.Streamed(weight);
            var kernel = longRows ? _gemvBf16Long : _gemvBf16;
            for (int t = 0; t < tokens; t++)
            {
                var (x4, d1) = (GpuViews.F4(x.SliceRows(t, 1)), GpuViews.F32(dst.SliceRows(t, 1)));
                Queue(name, config, s => kernel.Launch(s, config, x4, w4, d1, inDim, outDim));
            }
        }
        else if (weight.DType == DType.F32)
        {
            var (x1, w1, d1) = (GpuViews.F32(x), GpuViews.F32(weight), GpuViews.F32(dst));
            Queue(name, config, s => _gemvF32.Launch(s, config, x1, w1, d1, tokens, inDim, outDim));
        }
        else
        {
            var kernel = (weight.DType == DType.F16 ? _gemvF16 : _gemvBf16Any).Launch;
            var (x1, w1, d1) = (GpuViews.F32(x), GpuViews.U16(weight), GpuViews.F32(dst));
            Queue(name, config, s => kernel(s, config, x1, w1, d1, tokens, inDim, outDim));
        }
    }

    // A one-warp-a-row GEMV's launch (GemvBf16, GemvBf16AddNorm, Gemv): _rowsPerGemvGroup rows a group.
    private KernelConfig GemvConfig(int outDim) => new((outDim + _rowsPerGemvGroup - 1) / _rowsPerGemvGroup, 32 * _rowsPerGemvGroup);

    // Whether a 16-byte bf16 GEMV's rows take the long-row variant (eight loads a lane in flight).
    private static bool LongRows(int inDim) => GemvLong && inDim > MatMulKernels.GemvLongRow;

    /// <summary>Whether the 16-byte bf16 GEMV (GemvBf16 and its fused variants) takes x times weight: bf16 weights, in % 8 == 0, aligned views.</summary>
    public static bool GemvBf16Fits(Tensor x, Tensor weight) =>
        weight.DType == DType.BF16 && x.Cols % 8 == 0 && GpuViews.Aligned16(x, weight);

    /// <summary>One token: dst[j] = silu(x . gateUp[j]) * (x . gateUp[ff + j]), GemvBf16's rows with the SwiGlu epilogue.</summary>
    public void GemvSwiGlu(Tensor x, Tensor gateUp, Tensor dst, ArrayView<ulong> sums, DeferredNorm norm, int inDim, int ff)
    {
        int rows = Math.Max(1, _rowsPerGemvGroup / 2);   // gate rows a group (and as many up rows): 2 rows warps
        var config = new KernelConfig((ff + rows - 1) / rows, 64 * rows);
        var (x4, w4, d1) = (GpuViews.F4(x), GpuViews.Streamed(gateUp), GpuViews.F32(dst));
        Queue("gemv_bf16_swiglu", config, s => _gemvBf16SwiGlu.Launch(s, config, x4, w4, d1, sums, norm, inDim, ff));
    }

    /// <summary>
    /// One token: residual += x . weight^T, dst = residual times normWeight, the sum of the new residual's squares added
    /// to sums (GemvBf16's rows; rows longer than GemvLongRow by the long variant).
    /// </summary>
    public void GemvAddNorm(Tensor x, Tensor weight, Tensor residual, Tensor normWeight, Tensor dst, ArrayView<ulong> sums)
    {
        int inDim = x.Cols, outDim = weight.Rows;
        var config = GemvConfig(outDim);
        bool longRows = LongRows(inDim);
        string name = longRows ? "gemv_bf16_add_norm_long" : "gemv_bf16_add_norm";
        var kernel = longRows ? _gemvBf16AddNormLong : _gemvBf16AddNorm;
        var (x4, w4, r1, g1, d1) = (GpuViews.F4(x), GpuViews.Streamed(weight), GpuViews.F32(residual), GpuViews.F32(normWeight), GpuViews.F32(dst));
        Queue(name, config, s => kernel.Launch(s, config, x4, w4, r1, g1, d1, sums, inDim, outDim));
    }

    /// <summary>Zeroes counters on the stream (a memset a decode step's graph or recording holds as it holds kernels).</summary>
    public void Zero(ArrayView<ulong> counters)
    {
        var config = new KernelConfig(1, 1);
        Queue("zero_counters", config, s => counters.MemSetToZero(s));
    }

    /// <summary>x (n values) times the scale of the deferred norm whose counters are sums.</summary>
    public void ScaleDeferred(Tensor x, ArrayView<ulong> sums, DeferredNorm norm)
    {
        int n = (int)x.Length, group = GroupSize(256);
        var config = new KernelConfig(Math.Clamp((n + group - 1) / group, 1, 4 * _multiprocessors), group);
        var x1 = GpuViews.F32(x);
        Queue("scale_deferred_norm", config, s => _scaleDeferred.Launch(s, config, x1, sums, norm, n));
    }

    /// <summary>One token: dst = x . qkv^T with q and k rotated and k, v stored at the cache row (GemvBf16's rows, a rotary pair a group).</summary>
    public void GemvRope(Tensor x, Tensor qkv, Tensor dst, Tensor kcache, Tensor vcache, F32 invFreq, ArrayView<int> step, RopeArgs args,
        ArrayView<ulong> sums, DeferredNorm norm)
    {
        // Two warps a unit (a rotary pair, or two v rows): (qDim + 2 kvDim) / 2 units.
        var config = new KernelConfig(qkv.Rows / 2, 64);
        var kernel = Need(_gemvBf16Rope, "gemv_bf16_rope");
        var (x4, w4, d1, kc, vc) = (GpuViews.F4(x), GpuViews.Streamed(qkv), GpuViews.F32(dst), GpuViews.U16(kcache), GpuViews.U16(vcache));
        Queue("gemv_bf16_rope", config, s => kernel(s, config, x4, w4, d1, kc, vc, invFreq, step, args, sums, norm, x.Cols));
    }

    /// <summary>dst[M, N] = x[M, K] * weight[N, K]^T on tensor cores (bf16 weights; x rounded to bf16).</summary>
    public void GemmBf16(F32 x, U16 weight, F32 dst, int m, int k, int n)
    {
        var config = new KernelConfig(new Index3D((n + MatMulKernels.GemmTile - 1) / MatMulKernels.GemmTile, (m + MatMulKernels.GemmTile - 1) / MatMulKernels.GemmTile, 1),
            new Index3D(256, 1, 1), SharedMemoryConfig.RequestDynamic<byte>(MatMulKernels.GemmSharedBytes + _scratchBytes));
        Queue("gemm_bf16", config, s => Need(_gemmBf16, "gemm_bf16")(s, config, x, weight, dst, m, k, n));
    }

    public void ToBf16(F32 x, U16 dst, long n)
    {
        int vector = Aligned(x, 16) && Aligned(dst, 8) ? 1 : 0;
        var config = ElementwiseConfig(vector != 0 ? (n + 3) / 4 : n);
        Queue("to_bf16", config, s => _toBf16.Launch(s, config, x, dst, n, vector));
    }

    /// <summary>dst (f32) = n bf16 (or f16) values of src, exactly.</summary>
    public void Widen(bool f16, U16 src, F32 dst, long n)
    {
        var config = ElementwiseConfig(n);
        string name = f16 ? "widen_f16" : "widen_bf16";
        Queue(name, config, s => Need(f16 ? _widenF16 : _widenBf16, name)(s, config, src, dst, n));
    }

    /// <summary>Rounds n f32 values in place to bf16 (or f16) values.</summary>
    public void Round(F32 x, long n, bool f16)
    {
        var config = ElementwiseConfig(n);
        string name = f16 ? "round_f16" : "round_bf16";
        Queue(name, config, s => Need(f16 ? _roundF16 : _roundBf16, name)(s, config, x, n));
    }

    public void SwiGlu(F32 gate, F32 up, F32 dst, long n, bool bf16)
    {
        int vector = Aligned(gate, 16) && Aligned(up, 16) && Aligned(dst, 16) ? 1 : 0;
        var config = ElementwiseConfig(vector != 0 ? (n + 3) / 4 : n);
        string name = bf16 ? "swiglu_cbf16" : "swiglu";
        Queue(name, config, s => (bf16 ? Need(_swiGluBf16, name) : _swiGlu.Launch)(s, config, gate, up, dst, n, vector));
    }

    public void Add(F32 x, F32 y, F32 dst, long n)
    {
        int vector = Aligned(x, 16) && Aligned(y, 16) && Aligned(dst, 16) ? 1 : 0;
        var config = ElementwiseConfig(vector != 0 ? (n + 3) / 4 : n);
        Queue("add", config, s => _add.Launch(s, config, x, y, dst, n, vector));
    }

    private static bool Aligned<T>(ArrayView<T> v, int bytes) where T : unmanaged => (long)v.LoadEffectiveAddressAsPtr() % bytes == 0;

    // A grid-stride loop over n elements: 256 threads a group, enough groups for one element a thread.
    private KernelConfig ElementwiseConfig(long n)
    {
        int group = GroupSize(256);
        return new KernelConfig(Groups(n, group), group);
    }

    /// <summary>Rotary embedding of q and k plus the KV-cache append (the layer's rows of the positions); f32 or bf16 cache views; step: the decode step's scalars.</summary>
    public void Rope(F32 q, F32 k, F32 v, Tensor kcache, Tensor vcache, F32 invFreq, ArrayView<int> step, int tokens, RopeArgs args, bool bf16)
    {
        // A few tokens: one head a group, so the step spreads over the GPU; many: every head of a token in one group.
        int heads = args.NumHeads + args.NumKvHeads, perGroup = tokens < _multiprocessors ? 1 : heads;
        args = args with { HeadsPerGroup = perGroup, Vectors = RopeVectors(args, q, k, v, kcache, vcache) };
        // 128 threads a group either way (H200, 16k tokens of 32/8 heads: 3,300 GB/s against 3,277 with 256 and 3,144 with 512).
        var config = new KernelConfig(new Index3D(tokens, (heads + perGroup - 1) / perGroup, 1), new Index3D(GroupSize(128), 1, 1));
        bool f32Cache = kcache.DType == DType.F32;
        string name = (bf16 ? "rope_cbf16" : "rope") + (f32Cache ? "_cf32" : "");
        if (f32Cache)
        {
            var kernel = Need(bf16 ? _ropeBf16CacheF32 : _ropeCacheF32, name);
            var (kc, vc) = (GpuViews.F32(kcache), GpuViews.F32(vcache));
            Queue(name, config, s => kernel(s, config, q, k, v, kc, vc, invFreq, step, args));
        }
        else
        {
            var kernel = Need(bf16 ? _ropeBf16 : _rope, name);
            var (kc, vc) = (GpuViews.U16(kcache), GpuViews.U16(vcache));
            Queue(name, config, s => kernel(s, config, q, k, v, kc, vc, invFreq, step, args));
        }
    }

    // 1 where the rope kernels may take four pairs a thread: whole 16-byte vectors of pairs and of the other dims, and
    // every view 16-byte aligned (the cache rows then start on 4-element boundaries).
    private static int RopeVectors(RopeArgs a, F32 q, F32 k, F32 v, Tensor kcache, Tensor vcache) =>
        a.RotaryDim % 8 == 0 && a.HeadDim % 4 == 0 && Aligned(q, 16) && Aligned(k, 16) && Aligned(v, 16)
        && GpuViews.Aligned16(kcache, vcache) ? 1 : 0;

    /// <summary>An index remap's far branch from the unrotated q and k (before Rope): far queries to qFar, grouped keys to the layer's kfar rows.</summary>
    public void RopeFar(F32 q, F32 k, F32 qFar, Tensor kfar, F32 invFreq, F32 groups, int groupStride, ArrayView<int> step, int tokens, RopeArgs args,
        int window, bool floor, bool bf16)
    {
        // Group sizes per KV head (groupStride > 0): one head a group, so each group reads one row of them.
        int heads = args.NumHeads + args.NumKvHeads, perGroup = tokens < _multiprocessors || groupStride > 0 ? 1 : heads;
        args = args with { HeadsPerGroup = perGroup, Vectors = RopeVectors(args, q, k, qFar, kfar, kfar) };
        var config = new KernelConfig(new Index3D(tokens, (heads + perGroup - 1) / perGroup, 1), new Index3D(GroupSize(perGroup == 1 ? 128 : 256), 1, 1));
        bool f32Cache = kfar.DType == DType.F32;
        string name = (bf16 ? "rope_far_cbf16" : "rope_far") + (f32Cache ? "_cf32" : "");
        int fl = floor ? 1 : 0;
        if (f32Cache)
        {
            var kernel = Need(bf16 ? _ropeFarBf16CacheF32 : _ropeFarCacheF32, name);
            var kf = GpuViews.F32(kfar);
            Queue(name, config, s => kernel(s, config, q, k, qFar, kf, invFreq, groups, step, args, window, fl, groupStride));
        }
        else
        {
            var kernel = Need(bf16 ? _ropeFarBf16 : _ropeFar, name);
            var kf = GpuViews.U16(kfar);
            Queue(name, config, s => kernel(s, config, q, k, qFar, kf, invFreq, groups, step, args, window, fl, groupStride));
        }
    }

    public void Rerotate(Tensor kcache, F32 invFrom, F32 invTo, int numLayers, int maxSeq, int length, int numKvHeads,
        int headDim, int rotaryDim, float magFrom, float magTo)
    {
        var config = new KernelConfig(new Index3D(length, numLayers, 1), new Index3D(GroupSize(128), 1, 1));
        bool f32Cache = kcache.DType == DType.F32;
        string name = f32Cache ? "rerotate_cf32" : "rerotate";
        if (f32Cache)
        {
            var (kernel, kc) = (Need(_rerotateF32, name), GpuViews.F32(kcache));
            Queue(name, config, s => kernel(s, config, kc, invFrom, invTo, maxSeq, numKvHeads, headDim, rotaryDim, magFrom, magTo));
        }
        else
        {
            var (kernel, kc) = (Need(_rerotate, name), GpuViews.U16(kcache));
            Queue(name, config, s => kernel(s, config, kc, invFrom, invTo, maxSeq, numKvHeads, headDim, rotaryDim, magFrom, magTo));
        }
    }

    /// <summary>
    /// Picks the attention variant: flash (prefill of at least 32 queries, bf16 cache, head dim 64 or 128), decode
    /// split-K (bf16 cache, head dim 64, 128 or 256, up to 8 query heads per KV head) or the per-head split-K, then the
    /// combine when the keys were split. kcache and vcache are the layer's rows; partial holds the split results.
    /// An index remap (window above 0, far queries qFar and grouped keys kfar) takes flash attention or the decode kernel
    /// in two parts where fastRemap allows, else the per-head split-K. stepLength above 0: a decode step whose position
    /// the kernels read from step; the splits are sized for stepLength keys (the step's bucket), not startPos + 1.
    /// </summary>
    public void Attention(F32 q, Tensor kcache, Tensor vcache, F32 dst, F32 partial, int tokens, int numHeads, int numKvHeads,
        int headDim, int startPos, bool flash, bool bf16, ArrayView<int> step, int stepLength = 0, F32 qFar = default, Tensor? kfar = null,
        int window = 0, F32 farPartial = default, bool fastRemap = false)
    {
        bool f32Cache = kcache.DType == DType.F32, vectors = GpuViews.Aligned16(kcache, vcache) && (numKvHeads * headDim) % 8 == 0;
        bool remap = window > 0;
        float scale = 1f / MathF.Sqrt(headDim);
        var flashKernel = headDim == 64 ? _flash64 : headDim == 128 ? _flash128 : null;
        var (farKernel, nearKernel) = headDim == 64 ? (_flash64Far, _flash64Near) : headDim == 128 ? (_flash128Far, _flash128Near) : (null, null);
        // An index remap takes flash attention and the decode kernel in two passes (far keys, then near) where
        // fastRemap allows, farPartial holding the far pass's rows; otherwise the split kernel with both branches.
        bool remapFast = remap && fastRemap && (kfar is null || GpuViews.Aligned16(kfar, vcache));
        if (stepLength == 0 && (!remap || remapFast) && flash && !f32Cache && tokens >= AttentionFlashKernels.MinTokens && flashKernel is not null && vectors
            && (!remap || (farKernel is not null && farPartial.Length >= (long)tokens * numHeads * (headDim + 2))))
        {
            int rows = 16 * FlashWarps;
            var fc = new KernelConfig(new Index3D((tokens + rows - 1) / rows, numHeads, 1), new Index3D(32 * FlashWarps, 1, 1),
                SharedMemoryConfig.RequestDynamic<byte>(2 * AttentionFlashKernels.SharedElements(headDim, FlashWarps) + _scratchBytes));
            string flashName = headDim == 64 ? "attention_flash_hd64" : "attention_flash_hd128";
            float scaleLog2 = scale * 1.4426950408889634f;   // softmax in the exp2 domain
            var (k4, v4) = (GpuViews.U4(kcache), GpuViews.U4(vcache));
            if (remap)
            {
                var (far, near, kf4) = (farKernel!.Launch, Need(nearKernel, flashName.Replace("flash_", "flash_near_")), GpuViews.U4(kfar!));
                Queue(flashName.Replace("flash_", "flash_far_"), fc,
                    s => far(s, fc, qFar, kf4, v4, dst, tokens, numHeads, numKvHeads, startPos, scaleLog2, window, farPartial));
                Queue(flashName.Replace("flash_", "flash_near_"), fc,
                    s => near(s, fc, q, k4, v4, dst, tokens, numHeads, numKvHeads, startPos, scaleLog2, window, farPartial));
            }
            else
            {
                Queue(flashName, fc, s => flashKernel.Launch(s, fc, q, k4, v4, dst, tokens, numHeads, numKvHeads, startPos, scaleLog2, 0, dst));
            }
            return;
        }
        int group = numHeads / numKvHeads, variant = GpuKernelSet.DecodeVariant(group);
        var decode = variant switch { 1 => _decode1, 2 => _decode2, 4 => _decode4, 8 => _decode8, _ => null };
        // (A remap's two parts need at least two splits of partials: more queries than that holds take the split kernel.)
        bool useDecode = (!remap || (remapFast && (long)tokens * numHeads * 2 * (headDim + 2) <= partial.Length))
            && !f32Cache && decode is not null && headDim is 64 or 128 or 256 && vectors && (long)tokens * numHeads * headDim % 4 == 0;
        int units = useDecode ? numKvHeads : numHeads, maxLen = stepLength > 0 ? stepLength : startPos + tokens;
        int splitLen;
        if (useDecode)
        {
            int perSm = Math.Min(SplitWaves, decode!.ActiveGroups(32 * AttentionDecodeKernels.Warps, 4 * AttentionDecodeKernels.SharedFloats(variant, headDim)));
            long wantedSplits = DecodeSplits((long)units * tokens, maxLen, perSm, _multiprocessors);
            splitLen = (int)Math.Min(int.MaxValue, (maxLen + wantedSplits - 1) / wantedSplits);
        }
        else
        {
            // Enough (head, query, split) groups to fill the GPU about SplitWaves times, at least MinSplit keys a split.
            long wanted = Math.Max(1, (long)SplitWaves * _multiprocessors / ((long)units * tokens));
            splitLen = (int)Math.Min(int.MaxValue, (maxLen + wanted - 1) / wanted);
            splitLen = Math.Max(MinSplit, (splitLen + MinSplit - 1) / MinSplit * MinSplit);
        }
        // A remap in the decode kernel: the far keys [0, i - W] and the near ones (i - W, i] in separate splits of one launch.
        bool twoParts = useDecode && remap;
        int Splits(int len) => Math.Max(1, (len + splitLen - 1) / splitLen);
        int FarSplits() => twoParts ? Splits(maxLen - window) : 0;
        int AllSplits() => twoParts ? FarSplits() + Splits(Math.Min(window, maxLen)) : Splits(maxLen);
        int splits = AllSplits();
        while (splits > 1 && ((long)tokens * numHeads * splits * (headDim + 2) > partial.Length || splits > AttentionKernels.MaxCombineSplits))
        {
            splitLen *= 2;
            splits = AllSplits();
        }
        int farSplits = FarSplits();
        var args = new AttentionArgs(numHeads, numKvHeads, headDim, startPos, splitLen, splits, scale, bf16 ? 1 : 0, window,
            StepPosition: stepLength > 0 ? 1 : 0);
        var farK = kfar ?? kcache;   // read only with a remap
        if (!remap) qFar = q;
        var config = useDecode ? DecodeConfig(units, tokens, splits, variant, headDim)
            : new KernelConfig(new Index3D(units, tokens, splits), new Index3D(AttentionKernels.GroupSize, 1, 1));
        string name = useDecode ? $"attention_decode_g{variant}" : f32Cache ? "attention_split_cf32" : "attention_split";
        if (useDecode)
        {
            var (kernel, q4, k4, v4) = (decode!.Launch, q.Cast<F4>(), GpuViews.Streamed(kcache), GpuViews.Streamed(vcache));
            var (qf4, kf4) = twoParts ? (qFar.Cast<F4>(), GpuViews.Streamed(farK)) : (q4, k4);
            var a = twoParts ? args with { FarSplits = farSplits } : args with { Window = 0 };
            Queue(name, config, s => kernel(s, config, q4, k4, v4, dst, partial, qf4, kf4, step, a));
        }
        else if (f32Cache)
        {
            var (kernel, kc, vc, kf) = (Need(_splitF32, name), GpuViews.F32(kcache), GpuViews.F32(vcache), GpuViews.F32(farK));
            Queue(name, config, s => kernel(s, config, q, kc, vc, dst, partial, qFar, kf, step, args));
        }
        else
        {
            var (kernel, kc, vc, kf) = (Need(_split, name), GpuViews.U16(kcache), GpuViews.U16(vcache), GpuViews.U16(farK));
            Queue(name, config, s => kernel(s, config, q, kc, vc, dst, partial, qFar, kf, step, args));
        }
        if (splits <= 1) return;
        var cc = new KernelConfig(new Index3D(numHeads, tokens, 1), new Index3D(GroupSize(AttentionKernels.CombineGroupSize), 1, 1));
        Queue("attention_combine", cc, s => _combine.Launch(s, cc, partial, dst, numHeads, headDim, splits));
    }

    /// <summary>
    /// Splits of each query's keys for the decode kernel, whose groups (perQuery a split) an SM holds perSm at once: as
    /// many groups as the SMs hold (at most SplitWaves an SM), in whole waves where the heads allow (every SM the same
    /// number), each split at least MinSplit keys of maxLen; the kernel shares a query's keys out evenly among them.
    /// H100, Llama-2-7B at depth 16384: 127.22 t/s against 124.15 / 125.46 with splits of a multiple of MinSplit keys
    /// sized for the step's bucket (23 splits, the last idle, 5.6 groups an SM).
    /// </summary>
    internal static long DecodeSplits(long perQuery, int maxLen, int perSm, int multiprocessors)
    {
        long cap = Math.Max(1, maxLen / MinSplit);
        long groups = Math.Min((long)perSm * multiprocessors, perQuery * cap);
        if (groups >= multiprocessors) groups = groups / multiprocessors * multiprocessors;
        return Math.Clamp(groups / perQuery, 1, cap);
    }

    // The decode kernel's launch: the warps DecodeWarpsFor picks, within the largest group and 48 KiB of shared memory.
    private KernelConfig DecodeConfig(int units, int tokens, int splits, int variant, int headDim)
    {
        int warps = Math.Min(DecodeWarpsFor((long)units * tokens * splits, variant, _multiprocessors), _maxGroup / 32);
        int SharedBytes() => 4 * AttentionDecodeKernels.SharedFloats(variant, headDim, warps);
        while (warps > 1 && SharedBytes() > 48 << 10) warps /= 2;
        return new KernelConfig(new Index3D(units, tokens, splits), new Index3D(32 * warps, 1, 1), SharedMemoryConfig.RequestDynamic<byte>(SharedBytes()));
    }

    /// <summary>Reads every vector of src once (dst[0] ^= their XOR): 8 groups of 256 threads an SM, grid-stride.</summary>
    public void MemoryRead(ArrayView<U4> src, ArrayView<uint> dst)
    {
        var config = new KernelConfig(8 * _multiprocessors, GroupSize(256));
        Queue("memory_read", config, s => _read.Launch(s, config, src, dst));
    }

    public void Argmax(F32 x, ArrayView<int> dst, int rows, int cols)
    {
        var config = new KernelConfig(rows, GroupSize(256));
        Queue("argmax", config, s => _argmax.Launch(s, config, x, dst, cols));
    }
}

/// <summary>The decode attention's key tile with one query head a lane (AttentionDecodeKernels' IKeyTile variants).</summary>
public enum DecodeTile
{
    /// <summary>LLAMA_ATTN_TILE's choice, else Four.</summary>
    Setting,
    Four,
    /// <summary>Four-step tiles, the full ones without guards.</summary>
    FullFour,
}

// Typed launchers, one per kernel: grid/block math, arguments from stack locals, cuLaunchKernel on the one stream.
// No synchronization unless LLAMA_SYNC=1, which waits after every launch and names the kernel that failed.
// Exercised by tests/BackendOpsTests.cs through CudaBackend.
namespace LlamaRun.Backends.Cuda;

internal sealed unsafe class CudaKernels
{
    public static readonly string[] EntryPoints =
    [
        "embedding_f32", "embedding_f16", "embedding_bf16", "rmsnorm_f32", "rmsnorm_cbf16_f32", "add_rmsnorm_f32", "add_rmsnorm_cbf16_f32",
        "gemv_warp_per_row_f32", "gemv_warp_per_row_f16", "gemv_warp_per_row_bf16", "gemv_warp_per_row_t1_bf16", "gemm_mma_bf16", "to_bf16_f32",
        "widen_bf16_f32", "widen_f16_f32", "rope_f32", "rope_cbf16_f32", "rope_f32_cf32", "rope_cbf16_f32_cf32",
        "rerotate_bf16", "rerotate_f32", "attention_split_bf16", "attention_split_f32", "attention_tiled_bf16", "attention_combine",
        "attention_flash_hd64_bf16", "attention_flash_hd128_bf16", "attention_flash_q128_hd64_bf16", "attention_flash_q128_hd128_bf16",
        "swiglu_f32", "swiglu_cbf16_f32", "add_f32", "round_bf16_f32", "round_f16_f32", "argmax_f32",
    ];

    public const int GemvMaxTokens = 8;
    public const int AttentionMaxHeadDim = 256;
    public const int TiledMaxHeadDim = 128, TiledMaxGroup = 8, TiledKeys = 64;
    public const int FlashMinTokens = 32;

    // Queries per flash-attention block: 64 (4 warps, default: three blocks share an SM) or 128 (8 warps, LLAMA_FLASH_ROWS=128).
    // Decode split-K: blocks per SM to aim for (LLAMA_ATTN_WAVES overrides, for tuning).
    private static readonly int SplitWaves = int.TryParse(Environment.GetEnvironmentVariable("LLAMA_ATTN_WAVES"), out int w) && w is > 0 and <= 64 ? w : 4;

    private static readonly int FlashRows = Environment.GetEnvironmentVariable("LLAMA_FLASH_ROWS") == "128" ? 128 : 64;

    private readonly KernelLibrary _lib;
    private readonly nint _stream;
    private readonly bool _sync;

    public CudaKernels(KernelLibrary lib, nint stream, bool sync)
    {
        _lib = lib;
        _stream = stream;
        _sync = sync;
        // The flash kernels take 35 KB of shared memory a block: ask for the largest shared carveout so that two or
        // more blocks fit on an SM beside the registers (the default carveout leaves room for one).
        foreach (var name in EntryPoints.Where(e => e.StartsWith("attention_flash_", StringComparison.Ordinal)))
            Cu.Check(Cu.cuFuncSetAttribute(lib[name], Cu.FuncAttributePreferredSharedCarveout, 100));
    }

    private void Launch(string name, uint gx, uint gy, uint gz, uint block, void** args)
    {
        int r = Cu.cuLaunchKernel(_lib[name], gx, gy, gz, block, 1, 1, 0, _stream, args, null);
        if (r != Cu.Success) throw new CudaException($"{Cu.ErrorName(r)}: launching {name} grid ({gx}, {gy}, {gz}) block {block}");
        if (_sync)
        {
            r = Cu.cuStreamSynchronize(_stream);
            if (r != Cu.Success) throw new CudaException($"{Cu.ErrorName(r)}: in kernel {name} (LLAMA_SYNC=1)");
        }
    }

    private static uint Blocks(long n, int block) => (uint)Math.Min((n + block - 1) / block, 65535L * 16);

    public void Embedding(string variant, ulong tokens, ulong table, ulong dst, int numTokens, int hidden)
    {
        void** a = stackalloc void*[] { &tokens, &table, &dst, &numTokens, &hidden };
        Launch(variant, Blocks(hidden, 256), (uint)Math.Min(numTokens, 65535), 1, 256, a);
    }

    // bf16: the variant that rounds its intermediates as a bf16 framework does (here and in Rope, SwiGlu, Attention).
    public void RmsNorm(ulong x, ulong weight, ulong dst, int rows, int n, float eps, bool bf16)
    {
        void** a = stackalloc void*[] { &x, &weight, &dst, &n, &eps };
        Launch(bf16 ? "rmsnorm_cbf16_f32" : "rmsnorm_f32", (uint)rows, 1, 1, n >= 8192 ? 512u : 256u, a);
    }

    public void AddRmsNorm(ulong x, ulong y, ulong weight, ulong dst, int rows, int n, float eps, bool bf16)
    {
        void** a = stackalloc void*[] { &x, &y, &weight, &dst, &n, &eps };
        Launch(bf16 ? "add_rmsnorm_cbf16_f32" : "add_rmsnorm_f32", (uint)rows, 1, 1, n >= 8192 ? 512u : 256u, a);
    }

    public void Gemv(string variant, ulong x, ulong weight, ulong dst, int tokens, int inDim, int outDim)
    {
        void** a = stackalloc void*[] { &x, &weight, &dst, &tokens, &inDim, &outDim };
        Launch(variant, (uint)((outDim + 7) / 8), 1, 1, 256, a);
    }

    public void GemmMmaBf16(ulong x, ulong weight, ulong dst, int m, int k, int n)
    {
        void** a = stackalloc void*[] { &x, &weight, &dst, &m, &k, &n };
        Launch("gemm_mma_bf16", (uint)((n + 127) / 128), (uint)((m + 127) / 128), 1, 256, a);
    }

    public void ToBf16(ulong x, ulong dst, long n)
    {
        void** a = stackalloc void*[] { &x, &dst, &n };
        Launch("to_bf16_f32", Blocks((n + 3) / 4, 256), 1, 1, 256, a);
    }

    /// <summary>dst (f32) = n bf16 (or f16) values of src, exactly.</summary>
    public void Widen(bool f16, ulong src, ulong dst, long n)
    {
        void** a = stackalloc void*[] { &src, &dst, &n };
        Launch(f16 ? "widen_f16_f32" : "widen_bf16_f32", Blocks(n, 256), 1, 1, 256, a);
    }

    // cacheF32: the KV cache holds f32 (full-precision mode) instead of bf16.
    public void Rope(ulong q, ulong k, ulong v, ulong kcache, ulong vcache, ulong invFreq, int tokens, int numHeads,
        int numKvHeads, int headDim, int rotaryDim, int startPos, int cacheRow0, float magnitude,
        float queryScaleContext, int queryScaleOn, bool bf16, bool cacheF32)
    {
        void** a = stackalloc void*[]
        {
            &q, &k, &v, &kcache, &vcache, &invFreq, &numHeads, &numKvHeads, &headDim, &rotaryDim, &startPos, &cacheRow0,
            &magnitude, &queryScaleContext, &queryScaleOn,
        };
        Launch((bf16 ? "rope_cbf16_f32" : "rope_f32") + (cacheF32 ? "_cf32" : ""), (uint)tokens, 1, 1, 256, a);
    }

    public void Rerotate(ulong kcache, ulong invFrom, ulong invTo, int numLayers, int maxSeq, int length, int numKvHeads,
        int headDim, int rotaryDim, float magFrom, float magTo, bool cacheF32)
    {
        void** a = stackalloc void*[] { &kcache, &invFrom, &invTo, &maxSeq, &numKvHeads, &headDim, &rotaryDim, &magFrom, &magTo };
        Launch(cacheF32 ? "rerotate_f32" : "rerotate_bf16", (uint)length, (uint)numLayers, 1, 128, a);
    }

    /// <summary>Picks the attention variant: flash (prefill, head dim 64/128), tiled or per-head split-K plus combine.</summary>
    public void Attention(ulong q, ulong kcache, ulong vcache, ulong dst, ulong partial, long partialFloats, int tokens,
        int numHeads, int numKvHeads, int headDim, int startPos, int smCount, bool flash, bool bf16, bool cacheF32)
    {
        // The flash kernels round the softmax weights to bf16 for the tensor cores in either mode; an f32 cache
        // (full precision) takes the split kernel, which keeps them f32 unless bf16 compute asks otherwise.
        float scale = 1f / MathF.Sqrt(headDim);
        if (flash && !cacheF32 && tokens >= FlashMinTokens && headDim is 64 or 128)
        {
            float scaleLog2 = scale * 1.4426950408889634f;   // softmax in the exp2 domain
            void** f = stackalloc void*[] { &q, &kcache, &vcache, &dst, &tokens, &numHeads, &numKvHeads, &startPos, &scaleLog2 };
            if (FlashRows == 128)
                Launch(headDim == 64 ? "attention_flash_q128_hd64_bf16" : "attention_flash_q128_hd128_bf16",
                    (uint)((tokens + 127) / 128), (uint)numHeads, 1, 256, f);
            else
                Launch(headDim == 64 ? "attention_flash_hd64_bf16" : "attention_flash_hd128_bf16", (uint)((tokens + 63) / 64), (uint)numHeads, 1, 128, f);
            return;
        }
        bool tiled = !cacheF32 && headDim <= TiledMaxHeadDim && headDim % 8 == 0 && numHeads / numKvHeads <= TiledMaxGroup;
        int units = tiled ? numKvHeads : numHeads, maxLen = startPos + tokens;
        // Enough (head, query, split) blocks to fill the GPU about SplitWaves times, at least one 64-key tile a split.
        long wanted = Math.Max(1, (long)SplitWaves * smCount / ((long)units * tokens));
        int splitLen = (int)Math.Min(int.MaxValue, (maxLen + wanted - 1) / wanted);
        splitLen = Math.Max(TiledKeys, (splitLen + TiledKeys - 1) / TiledKeys * TiledKeys);
        int splits = (maxLen + splitLen - 1) / splitLen, roundP = bf16 ? 1 : 0;
        while (splits > 1 && (long)tokens * numHeads * splits * (headDim + 2) > partialFloats)
        {
            splitLen *= 2;
            splits = (maxLen + splitLen - 1) / splitLen;
        }
        void** a = stackalloc void*[]
        {
            &q, &kcache, &vcache, &dst, &partial, &numHeads, &numKvHeads, &headDim, &startPos, &splitLen, &splits, &scale, &roundP,
        };
        if (tiled) Launch("attention_tiled_bf16", (uint)numKvHeads, (uint)tokens, (uint)splits, 128, a);
        else Launch(cacheF32 ? "attention_split_f32" : "attention_split_bf16", (uint)numHeads, (uint)tokens, (uint)splits, 128, a);
        if (splits <= 1) return;
        void** c = stackalloc void*[] { &partial, &dst, &numHeads, &headDim, &splits };
        Launch("attention_combine", (uint)numHeads, (uint)tokens, 1, 128, c);
    }

    public void SwiGlu(ulong gate, ulong up, ulong dst, long n, bool bf16)
    {
        void** a = stackalloc void*[] { &gate, &up, &dst, &n };
        Launch(bf16 ? "swiglu_cbf16_f32" : "swiglu_f32", Blocks(n, 256), 1, 1, 256, a);
    }

    /// <summary>Rounds n f32 values in place to bf16 (or f16) values.</summary>
    public void Round(ulong x, long n, bool f16)
    {
        void** a = stackalloc void*[] { &x, &n };
        Launch(f16 ? "round_f16_f32" : "round_bf16_f32", Blocks(n, 256), 1, 1, 256, a);
    }

    public void Add(ulong x, ulong y, ulong dst, long n)
    {
        void** a = stackalloc void*[] { &x, &y, &dst, &n };
        Launch("add_f32", Blocks(n, 256), 1, 1, 256, a);
    }

    public void Argmax(ulong x, ulong dst, int rows, int cols)
    {
        void** a = stackalloc void*[] { &x, &dst, &cols };
        Launch("argmax_f32", (uint)rows, 1, 1, 256, a);
    }
}

// Which optional kernel variants a GPU backend compiles at start-up; the core set (the ops of a default forward pass)
// is always loaded. A model session asks for its head dim, query group and compute mode, so start-up compiles
// only what the run can use; tests and `llama-run check` ask for All. Used by GpuKernels.
namespace LlamaRun.Backends.Gpu;

/// <summary>Optional kernel variants: bf16-compute ones, f32-cache ones, flash attention per head dim, decode per query group.</summary>
/// <param name="Bf16Compute">The variants that round intermediates as a bf16 framework does (--compute bf16) and Round.</param>
/// <param name="HeadDims">Head dims to load flash attention for (64 and/or 128).</param>
/// <param name="QueryGroups">Query heads per KV head to load decode attention for (rounded up to 1, 2, 4 or 8).</param>
/// <param name="Remap">The far-branch rotary kernels of index-remap RoPE (Self-Extend, DPE, ReRoPE).</param>
public sealed record GpuKernelSet(bool Bf16Compute, IReadOnlyList<int> HeadDims, IReadOnlyList<int> QueryGroups, bool Remap = false)
{
    /// <summary>Every variant.</summary>
    public static GpuKernelSet All { get; } = new(true, [64, 128], [1, 2, 4, 8], Remap: true);

    /// <summary>What a model with these attention shapes needs.</summary>
    public static GpuKernelSet For(int headDim, int queryGroup, bool bf16Compute, bool remap = false) => new(bf16Compute, [headDim], [queryGroup], remap);

    public bool Flash(int headDim) => HeadDims.Contains(headDim);

    public bool Decode(int group) => QueryGroups.Any(g => DecodeVariant(g) == DecodeVariant(group));

    /// <summary>The decode variant that holds a group of this many query heads: 1, 2, 4 or 8 (0 above 8).</summary>
    public static int DecodeVariant(int group) => group switch { 1 => 1, 2 => 2, <= 4 => 4, <= 8 => 8, _ => 0 };
}

// The one RoPE table format every backend's rotary op consumes (ROPE.md section 8).
// Producers (one file per method family in this folder) build it; the forward pass only reads it.
namespace LlamaRun.Rope;

/// <summary>Query-only logit multiplier lambda(layer, m) = max(1, ln(m+1)/ln(Context)) for layers >= SkipLayers.</summary>
public sealed record QueryScale(float Context, int SkipLayers)
{
    public float At(int layer, int position) =>
        layer < SkipLayers ? 1f : MathF.Max(1f, MathF.Log(position + 1) / MathF.Log(Context));
}

/// <summary>Per-pair inverse frequencies plus cos/sin magnitude and an optional query scale.</summary>
public sealed record RopeTable
{
    /// <summary>Name of the method that produced the table, e.g. "yarn" or "dprope".</summary>
    public required string Method { get; init; }

    /// <summary>omega_j for pairs j = 0 .. rotaryDim/2 - 1, float32.</summary>
    public required float[] InvFreq { get; init; }

    /// <summary>cos and sin are multiplied by this (YaRN/LongRoPE attention_factor), so logits scale by its square.</summary>
    public float Magnitude { get; init; } = 1f;

    public QueryScale? QueryScale { get; init; }

    public int RotaryDim => InvFreq.Length * 2;
}

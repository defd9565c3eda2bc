// The one RoPE table format every backend's rotary op consumes (ROPE.md section 8).
// Producers (one file per method family in this folder) build it; the forward pass only reads it.
using LlamaRun.Kernels.Device;

namespace LlamaRun.Core;

/// <summary>Query-only logit multiplier lambda(layer, m) = max(1, ln(m+1)/ln(Context)) for layers >= SkipLayers.</summary>
public sealed record QueryScale(float Context, int SkipLayers)
{
    public float At(int layer, int position) => layer < SkipLayers ? 1f : RopeMath.QueryScale(position, Context);
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

    /// <summary>The context-extension factor the method was built for (1 for plain RoPE).</summary>
    public double Factor { get; init; } = 1.0;

    /// <summary>How many pairs turn slower than plain RoPE with the same base (0 for plain RoPE and ABF).</summary>
    public int InterpolatedPairs { get; init; }

    /// <summary>One line for logs: method, factor, interpolated pairs, magnitude and query scale.</summary>
    public string Describe()
    {
        var text = FormattableString.Invariant(
            $"rope {Method}: factor {Factor:0.###}, {InterpolatedPairs}/{InvFreq.Length} pairs interpolated");
        if (Magnitude != 1f) text += FormattableString.Invariant($", magnitude {Magnitude:0.####}");
        if (QueryScale is { } q) text += FormattableString.Invariant($", query scale log_{q.Context:0}(m+1) from layer {q.SkipLayers}");
        return text;
    }
}

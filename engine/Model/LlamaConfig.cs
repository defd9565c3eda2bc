// config.json of a Hugging Face Llama checkpoint as a validated record (transformers 4.x and 5.x forms).
// Parsing lives in LlamaConfigReader.cs; this file holds only the typed result.
using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>RoPE scaling families named by transformers' rope_type.</summary>
public enum RopeType { Default, Linear, Dynamic, Yarn, Llama3, LongRope }

/// <summary>RoPE parameters of a checkpoint, as transformers reads them (null means "not given").</summary>
public sealed record RopeParameters
{
    public RopeType Type { get; init; } = RopeType.Default;
    public double Theta { get; init; } = 10000.0;
    public double PartialRotaryFactor { get; init; } = 1.0;
    public double? Factor { get; init; }
    public int? OriginalMaxPositionEmbeddings { get; init; }
    public double? AttentionFactor { get; init; }
    public double? BetaFast { get; init; }
    public double? BetaSlow { get; init; }
    public double? Mscale { get; init; }
    public double? MscaleAllDim { get; init; }
    public bool? Truncate { get; init; }
    public double? LowFreqFactor { get; init; }
    public double? HighFreqFactor { get; init; }
    public float[]? ShortFactor { get; init; }
    public float[]? LongFactor { get; init; }
}

/// <summary>The architecture of a Llama checkpoint, validated (all sizes positive and consistent).</summary>
public sealed record LlamaConfig
{
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public required float RmsNormEps { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public required bool TieWordEmbeddings { get; init; }
    public required RopeParameters Rope { get; init; }
    public int[] BosTokenIds { get; init; } = [];
    public int[] EosTokenIds { get; init; } = [];
    public DType TorchDType { get; init; } = DType.F32;

    public int QDim => NumAttentionHeads * HeadDim;
    public int KvDim => NumKeyValueHeads * HeadDim;
    public int RotaryDim => (int)(HeadDim * Rope.PartialRotaryFactor);
}

// Which RoPE table applies at a given sequence length: one fixed table, or a length-dependent one
// (dynamic NTK, LongRoPE short/long). The forward pass asks for the table before each step and
// re-rotates the cached keys when the answer changes.
namespace LlamaRun.Core;

/// <summary>A RoPE table, possibly depending on the sequence length seen so far.</summary>
public sealed class RopeSchedule(RopeTable table, Func<int, RopeTable>? forLength = null)
{
    /// <summary>The table within the trained length (and the only one for fixed methods).</summary>
    public RopeTable Base { get; } = table;

    public bool IsLengthDependent => forLength is not null;

    /// <summary>The table for a forward pass whose last position is sequenceLength - 1.</summary>
    public RopeTable For(int sequenceLength) => forLength?.Invoke(sequenceLength) ?? Base;

    public static RopeSchedule Fixed(RopeTable table) => new(table);
}

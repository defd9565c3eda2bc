// How one rank of a tensor-parallel group slices a Llama (Megatron-style): query heads, FFN columns and vocabulary rows
// split evenly by rank; KV heads split too, or, with more ranks than KV heads, each rank keeps the one its query heads
// read. Example: 4 heads and 2 KV heads over 4 ranks: rank r has query head r and KV head r / 2. Used by LlamaWeights
// (which rows and columns each rank loads) and Llama (the rank's sizes). Test: tests/TensorParallelTests.cs.
namespace LlamaRun.Model;

/// <summary>The slices of one rank: query heads [HeadStart, +Heads), KV heads [KvStart, +KvHeads), FFN rows [FfnStart, +Ffn), vocab rows [VocabStart, +Vocab).</summary>
public sealed record ShardPlan(int Rank, int Size, int HeadStart, int Heads, int KvStart, int KvHeads, int FfnStart, int Ffn, int VocabStart, int Vocab)
{
    /// <summary>The plan of rank of size ranks, or an ArgumentException naming the size that does not divide.</summary>
    public static ShardPlan For(LlamaConfig c, int rank, int size)
    {
        if (size < 1 || (uint)rank >= (uint)size) throw new ArgumentException($"rank {rank} of {size} ranks");
        int h = c.NumAttentionHeads, kv = c.NumKeyValueHeads, ff = c.IntermediateSize, v = c.VocabSize;
        if (h % size != 0) throw new ArgumentException($"--tp {size}: {h} attention heads do not split over {size} ranks");
        if (size <= kv ? kv % size != 0 : size % kv != 0)
            throw new ArgumentException($"--tp {size}: {kv} KV heads neither split over {size} ranks nor divide them");
        if (ff % size != 0) throw new ArgumentException($"--tp {size}: intermediate size {ff} does not split over {size} ranks");
        if (v % size != 0) throw new ArgumentException($"--tp {size}: vocabulary {v} does not split over {size} ranks");
        int kvHeads = Math.Max(1, kv / size);
        return new ShardPlan(rank, size, rank * (h / size), h / size, rank * kv / size, kvHeads, rank * (ff / size), ff / size, rank * (v / size), v / size);
    }

    /// <summary>The rank's own sizes: its heads, KV heads and FFN width (the vocabulary stays whole: logits are gathered).</summary>
    public LlamaConfig Local(LlamaConfig c) => c with { NumAttentionHeads = Heads, NumKeyValueHeads = KvHeads, IntermediateSize = Ffn };
}

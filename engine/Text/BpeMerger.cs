// The BPE merge loop shared by the SentencePiece and Hugging Face encoders: a doubly linked list of
// symbols plus a priority queue of candidate pairs, so a long word merges in O(n log n), not O(n^2).
// Exercised through Tokenizer.Encode by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Runtime.CompilerServices;

namespace LlamaRun.Text;

// One symbol of a word being merged: a span of the source text, its token id (-1 when unknown),
// its neighbours, and a version that changes whenever the symbol changes (stale queue entries see it).
internal struct BpeSymbol
{
    public int Start;
    public int Length;
    public int Id;
    public int Prev;
    public int Next;
    public int Version;
}

// Decides whether two adjacent symbols merge: key orders the candidates (lowest first), id is the result.
internal interface IBpePairRule
{
    bool TryPair(in BpeSymbol left, in BpeSymbol right, out float key, out int mergedId);
}

internal static class BpeMerger
{
    private readonly record struct Candidate(int Left, int Right, int LeftVersion, int RightVersion, int MergedId);

    private readonly record struct Priority(float Key, int Left);

    private sealed class PriorityOrder : IComparer<Priority>
    {
        public static readonly PriorityOrder Instance = new();

        // Lowest key first; on equal keys the leftmost pair first (what both SentencePiece and HF do).
        public int Compare(Priority a, Priority b) => a.Key != b.Key ? a.Key.CompareTo(b.Key) : a.Left.CompareTo(b.Left);
    }

    [ThreadStatic] private static PriorityQueue<Candidate, Priority>? t_queue;

    // Links symbols[0..count) in order, merges until no pair applies; returns the index of the first symbol
    // (follow Next until -1). Merged-away symbols keep Length 0.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Merge<TRule>(Span<BpeSymbol> symbols, ref TRule rule) where TRule : struct, IBpePairRule
    {
        int n = symbols.Length;
        if (n == 0) return -1;
        for (int i = 0; i < n; i++)
        {
            symbols[i].Prev = i - 1;
            symbols[i].Next = i + 1 < n ? i + 1 : -1;
            symbols[i].Version = 0;
        }
        if (n == 1) return 0;

        var queue = t_queue ??= new PriorityQueue<Candidate, Priority>(PriorityOrder.Instance);
        queue.Clear();
        for (int i = 0; i + 1 < n; i++) Offer(symbols, queue, ref rule, i, i + 1);

        while (queue.TryDequeue(out var c, out _))
        {
            ref var left = ref symbols[c.Left];
            ref var right = ref symbols[c.Right];
            if (left.Version != c.LeftVersion || right.Version != c.RightVersion) continue;

            left.Length += right.Length;
            left.Id = c.MergedId;
            left.Version++;
            left.Next = right.Next;
            right.Length = 0;
            right.Version++;
            if (right.Next >= 0) symbols[right.Next].Prev = c.Left;

            if (left.Prev >= 0) Offer(symbols, queue, ref rule, left.Prev, c.Left);
            if (left.Next >= 0) Offer(symbols, queue, ref rule, c.Left, left.Next);
        }
        return 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Offer<TRule>(Span<BpeSymbol> symbols, PriorityQueue<Candidate, Priority> queue, ref TRule rule,
        int left, int right) where TRule : struct, IBpePairRule
    {
        ref readonly var l = ref symbols[left];
        ref readonly var r = ref symbols[right];
        if (rule.TryPair(l, r, out float key, out int merged))
            queue.Enqueue(new Candidate(left, right, l.Version, r.Version, merged), new Priority(key, left));
    }
}

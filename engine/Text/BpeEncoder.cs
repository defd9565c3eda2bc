// Hugging Face BPE encoding (tokenizer.json "model": {"type": "BPE"}): added tokens are cut out first, each
// remaining segment is normalized and pre-tokenized, and each word is merged by merge rank (lowest first,
// leftmost on ties), with ignore_merges, byte_fallback and fuse_unk. Words are cached.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Runtime.CompilerServices;
using System.Buffers;
using System.Collections.Concurrent;
using System.Text;

namespace LlamaRun.Text;

internal sealed class BpeEncoder : ITokenEncoder
{
    private const int MaxCachedWordLength = 128;
    private const int MaxCacheEntries = 1 << 18;
    private int _cacheSize;

    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocab;
    private readonly Dictionary<long, (int Rank, int Id)> _merges;
    private readonly int[] _byteIds;           // <0xNN> token per byte for byte_fallback, -1 when absent
    private readonly int _unkId;
    private readonly bool _byteFallback, _fuseUnk, _ignoreMerges, _byteLevel;
    // No pre-tokenizer, and no token has U+2581 after another character: no merge crosses the start of a
    // "▁word", so such words are encoded (and cached) one by one with the same result.
    private bool _wordwise;

    // Tests switch word-by-word encoding off to check that it changes nothing.
    internal bool Wordwise { get => _wordwise; set => _wordwise = value && _wordwiseSafe; }

    private readonly bool _wordwiseSafe;
    private readonly AddedTokenMatcher? _added;
    private readonly NormalizerStep[] _normalizer;
    private readonly PreTokenizerStep[] _preTokenizer;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;

    public BpeEncoder(Dictionary<string, int> vocab, Dictionary<long, (int Rank, int Id)> merges, int unkId,
        bool byteFallback, bool fuseUnk, bool ignoreMerges, IReadOnlyList<AddedToken> added,
        NormalizerStep[] normalizer, PreTokenizerStep[] preTokenizer)
    {
        _vocab = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _merges = merges;
        _unkId = unkId;
        _byteFallback = byteFallback;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _byteLevel = preTokenizer.Length > 0 && preTokenizer[^1] is PreTokenizerStep.ByteLevel;
        if (added.Count > 0) _added = new AddedTokenMatcher(added);
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        const char space = SentencePieceBpe.SpaceSymbol;
        _wordwise = _wordwiseSafe = preTokenizer.Length == 0 && vocab.ContainsKey(space.ToString()) &&
                    vocab.Keys.All(k => k.AsSpan().TrimStart(space).IndexOf(space) < 0);
        _byteIds = new int[256];
        for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        if (_byteFallback && Array.IndexOf(_byteIds, -1) >= 0) _byteFallback = false;
    }

    public void Encode(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;
        if (_added is null)
        {
            EncodeSegment(text.ToString(), true, output);
            return;
        }
        var parts = new List<(int Start, int Length, AddedToken? Token)>();
        _added.Split(text, parts);
        foreach (var (start, length, token) in parts)
        {
            if (token is not null) output.Add(token.Id);
            else EncodeSegment(text.Slice(start, length).ToString(), start == 0, output);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void EncodeSegment(string segment, bool first, List<int> output)
    {
        string normalized = _normalizer.Length > 0 ? BpePreTokenizer.Normalize(segment, _normalizer) : segment;
        if (normalized.Length == 0) return;
        if (_wordwise)
        {
            for (int start = 0; start < normalized.Length;)
            {
                int end = start + 1;
                while (end < normalized.Length && !(normalized[end] == SentencePieceBpe.SpaceSymbol &&
                                                     normalized[end - 1] != SentencePieceBpe.SpaceSymbol)) end++;
                EncodeWord(normalized.AsSpan(start, end - start), output);
                start = end;
            }
            return;
        }
        var words = _preTokenizer.Length > 0
            ? BpePreTokenizer.Run(normalized.AsMemory(), first, _preTokenizer)
            : [normalized.AsMemory()];
        char[]? scratch = null;
        try
        {
            foreach (var w in words)
            {
                if (w.IsEmpty) continue;
                if (!_byteLevel)
                {
                    EncodeWord(w.Span, output);
                    continue;
                }
                int need = BpePreTokenizer.MaxByteLevelLength(w.Length);
                if (scratch is null || scratch.Length < need)
                {
                    if (scratch is not null) ArrayPool<char>.Shared.Return(scratch);
                    scratch = ArrayPool<char>.Shared.Rent(Math.Max(need, 256));
                }
                int n = BpePreTokenizer.ToByteLevel(w.Span, scratch);
                EncodeWord(scratch.AsSpan(0, n), output);
            }
        }
        finally
        {
            if (scratch is not null) ArrayPool<char>.Shared.Return(scratch);
        }
    }

    private void EncodeWord(ReadOnlySpan<char> word, List<int> output)
    {
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
        {
            output.Add(whole);
            return;
        }
        bool cacheable = word.Length <= MaxCachedWordLength;
        if (cacheable && _cacheLookup.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        int start = output.Count;
        MergeWord(word, output);
        if (cacheable)
        {
            // ConcurrentDictionary.Count takes every lock, so the size is tracked separately.
            if (Interlocked.Increment(ref _cacheSize) > MaxCacheEntries)
            {
                _cache.Clear();
                Interlocked.Exchange(ref _cacheSize, 0);
            }
            _cacheLookup.TryAdd(word, output.GetRange(start, output.Count - start).ToArray());
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void MergeWord(ReadOnlySpan<char> word, List<int> output)
    {
        BpeSymbol[] symbols = ArrayPool<BpeSymbol>.Shared.Rent(word.Length * 4);
        try
        {
            int count = 0;
            Span<byte> utf8 = stackalloc byte[4];
            for (int i = 0; i < word.Length;)
            {
                int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
                var ch = word.Slice(i, len);
                if (_vocab.TryGetValue(ch, out int id))
                {
                    symbols[count++] = new BpeSymbol { Start = i, Length = len, Id = id };
                }
                else if (_byteFallback)
                {
                    Rune.DecodeFromUtf16(ch, out var rune, out _);
                    int nb = rune.EncodeToUtf8(utf8);
                    for (int k = 0; k < nb; k++) symbols[count++] = new BpeSymbol { Start = i, Length = 0, Id = _byteIds[utf8[k]] };
                }
                else if (_unkId < 0)
                {
                    throw new ArgumentException(
                        $"the text holds '{ch.ToString()}', which has no token and the tokenizer defines no unk token");
                }
                else if (!(_fuseUnk && count > 0 && symbols[count - 1].Id == _unkId))
                {
                    symbols[count++] = new BpeSymbol { Start = i, Length = len, Id = _unkId };
                }
                i += len;
            }
            var rule = new RankRule(_merges);
            for (int s = BpeMerger.Merge(symbols.AsSpan(0, count), ref rule); s >= 0; s = symbols[s].Next)
                output.Add(symbols[s].Id);
        }
        finally
        {
            ArrayPool<BpeSymbol>.Shared.Return(symbols);
        }
    }

    internal static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    // long.GetHashCode folds the halves with XOR, so (left, right) pairs of small ids collide in bulk;
    // a multiplicative hash spreads them.
    internal sealed class PairComparer : IEqualityComparer<long>
    {
        public static readonly PairComparer Instance = new();

        public bool Equals(long a, long b) => a == b;

        public int GetHashCode(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> 32);
    }

    private readonly struct RankRule(Dictionary<long, (int Rank, int Id)> merges) : IBpePairRule
    {
        public bool TryPair(in BpeSymbol left, in BpeSymbol right, out float key, out int mergedId)
        {
            if (merges.TryGetValue(PairKey(left.Id, right.Id), out var m))
            {
                key = m.Rank;
                mergedId = m.Id;
                return true;
            }
            key = 0;
            mergedId = -1;
            return false;
        }
    }
}

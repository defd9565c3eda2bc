// SentencePiece BPE encoding of a `tokenizer.model`: normalize (extra-whitespace removal, dummy prefix,
// ' ' -> U+2581), split into characters (user-defined pieces whole), merge the pair whose merged piece
// scores highest (leftmost on ties), then byte-fallback or unk for what is left unknown.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Runtime.CompilerServices;
using System.Buffers;
using System.Collections.Concurrent;
using LlamaRun.Model;

namespace LlamaRun.Text;

internal sealed class SentencePieceBpe : ITokenEncoder
{
    internal const char SpaceSymbol = '\u2581';

    private readonly SentencePieceProto _proto;
    private readonly Dictionary<string, int> _pieces;   // NORMAL, USER_DEFINED and UNUSED pieces
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int[] _byteIds;                    // <0xNN> piece per byte value, -1 when absent
    private readonly AddedTokenMatcher? _userDefined;
    private readonly bool _hasUnused;
    // When no piece has U+2581 after a non-U+2581 character, no merge crosses the start of a word, so words
    // are encoded independently (same result) and cached.
    private bool _wordwise;

    // Tests switch word-by-word encoding off to check that it changes nothing.
    internal bool Wordwise { get => _wordwise; set => _wordwise = value && _wordwiseSafe; }

    private readonly bool _wordwiseSafe;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    private const int MaxCachedWordLength = 64;
    private const int MaxCacheEntries = 1 << 18;
    private int _cacheSize;

    public SentencePieceBpe(SentencePieceProto proto, string path)
    {
        _proto = proto;
        if (proto.ModelType != 2)
        {
            string kind = proto.ModelType switch { 1 => "Unigram", 3 => "Word", 4 => "Char", _ => $"type {proto.ModelType}" };
            throw ModelFormatException.In(path, $"SentencePiece model type {kind} is not supported (only BPE)");
        }
        if (proto.CharsMapLength > 0 && proto.NormalizerName != "identity")
            throw ModelFormatException.In(path,
                $"SentencePiece normalization rule '{proto.NormalizerName}' is not supported (only identity)");
        if (proto.TreatWhitespaceAsSuffix)
            throw ModelFormatException.In(path, "SentencePiece treat_whitespace_as_suffix is not supported");
        int n = proto.Pieces.Length;
        if (proto.UnkId < 0 || proto.UnkId >= n || proto.Types[proto.UnkId] != PieceType.Unknown)
            throw ModelFormatException.In(path, $"unk_id {proto.UnkId} is not an UNKNOWN piece of the {n}");

        _pieces = new Dictionary<string, int>(n, StringComparer.Ordinal);
        _byteIds = new int[256];
        Array.Fill(_byteIds, -1);
        var userDefined = new List<(string, int)>();
        for (int i = 0; i < n; i++)
        {
            var t = proto.Types[i];
            string p = proto.Pieces[i];
            if (t is PieceType.Normal or PieceType.UserDefined or PieceType.Unused)
            {
                if (!_pieces.TryAdd(p, i)) throw ModelFormatException.In(path, $"piece '{p}' (id {i}) is defined twice");
                if (t == PieceType.UserDefined) userDefined.Add((p, i));
                if (t == PieceType.Unused) _hasUnused = true;
            }
            else if (t == PieceType.Byte)
            {
                if (p.Length != 6 || !p.StartsWith("<0x", StringComparison.Ordinal) || p[5] != '>' ||
                    !byte.TryParse(p.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                    throw ModelFormatException.In(path, $"byte piece {i} is '{p}', expected <0xNN>");
                _byteIds[b] = i;
            }
        }
        if (proto.ByteFallback && Array.IndexOf(_byteIds, -1) >= 0)
            throw ModelFormatException.In(path, "byte_fallback is set but not all 256 <0xNN> pieces exist");
        _lookup = _pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        _wordwise = _wordwiseSafe = _pieces.ContainsKey(SpaceSymbol.ToString()) && _pieces.Keys.All(p => p.AsSpan().TrimStart(SpaceSymbol).IndexOf(SpaceSymbol) < 0);
        if (userDefined.Count > 0) _userDefined = new AddedTokenMatcher(userDefined);
    }

    public int PieceToId(string piece) => _pieces.TryGetValue(piece, out int id) ? id : -1;

    public int ByteId(byte b) => _byteIds[b];

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Encode(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;
        char[] norm = ArrayPool<char>.Shared.Rent(text.Length + 1);
        try
        {
            int len = Normalize(text, norm);
            if (!_wordwise)
            {
                EncodeRange(norm, 0, len, output);
                return;
            }
            for (int start = 0; start < len;)
            {
                int end = start + 1;
                while (end < len && !(norm[end] == SpaceSymbol && norm[end - 1] != SpaceSymbol)) end++;
                EncodeWord(norm, start, end - start, output);
                start = end;
            }
        }
        finally
        {
            ArrayPool<char>.Shared.Return(norm);
        }
    }

    private void EncodeWord(char[] norm, int start, int length, List<int> output)
    {
        var word = norm.AsSpan(start, length);
        bool cacheable = length <= MaxCachedWordLength;
        if (cacheable && _cacheLookup.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        int first = output.Count;
        EncodeRange(norm, start, length, output);
        if (cacheable)
        {
            // ConcurrentDictionary.Count takes every lock, so the size is tracked separately.
            if (Interlocked.Increment(ref _cacheSize) > MaxCacheEntries)
            {
                _cache.Clear();
                Interlocked.Exchange(ref _cacheSize, 0);
            }
            _cacheLookup.TryAdd(word, output.GetRange(first, output.Count - first).ToArray());
        }
    }

    // BPE over norm[start, start + length): split into symbols, merge, emit.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void EncodeRange(char[] norm, int start, int length, List<int> output)
    {
        BpeSymbol[] symbols = ArrayPool<BpeSymbol>.Shared.Rent(length + 1);
        try
        {
            int count = Split(norm.AsSpan(0, start + length), start, symbols);
            var rule = new PieceRule(this, norm, _hasUnused);
            int first = BpeMerger.Merge(symbols.AsSpan(0, count), ref rule);
            Emit(norm, symbols, first, rule.Reverse, output);
        }
        finally
        {
            ArrayPool<BpeSymbol>.Shared.Return(symbols);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Normalize(ReadOnlySpan<char> text, char[] dst)
    {
        int start = 0, end = text.Length;
        if (_proto.RemoveExtraWhitespaces)
        {
            while (start < end && text[start] == ' ') start++;
            while (end > start && text[end - 1] == ' ') end--;
        }
        if (start == end) return 0;
        int o = 0;
        char space = _proto.EscapeWhitespaces ? SpaceSymbol : ' ';
        if (_proto.AddDummyPrefix) dst[o++] = space;
        for (int i = start; i < end; i++)
        {
            char c = text[i];
            if (c == ' ')
            {
                if (_proto.RemoveExtraWhitespaces && i > start && text[i - 1] == ' ') continue;
                c = space;
            }
            dst[o++] = c;
        }
        return o;
    }

    // One symbol per code point (a valid surrogate pair is one), or per user-defined piece.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Split(ReadOnlySpan<char> s, int from, BpeSymbol[] symbols)
    {
        int count = 0;
        for (int i = from; i < s.Length;)
        {
            int len, id;
            if (_userDefined is not null && _userDefined.MatchAt(s, i, out int udLen, out int udId))
            {
                len = udLen;
                id = udId;
            }
            else
            {
                len = char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;
                id = _lookup.TryGetValue(s.Slice(i, len), out int v) ? v : -1;
            }
            symbols[count++] = new BpeSymbol { Start = i, Length = len, Id = id };
            i += len;
        }
        return count;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Emit(char[] text, BpeSymbol[] symbols, int first, Dictionary<string, (string, string)>? reverse,
        List<int> output)
    {
        bool prevUnk = false;
        Span<byte> utf8 = stackalloc byte[8];
        for (int i = first; i >= 0; i = symbols[i].Next)
        {
            ref var s = ref symbols[i];
            var span = text.AsSpan(s.Start, s.Length);
            if (s.Id >= 0)
            {
                if (reverse is not null && _proto.Types[s.Id] == PieceType.Unused) Resegment(span.ToString(), reverse, output);
                else output.Add(s.Id);
                prevUnk = false;
                continue;
            }
            if (_proto.ByteFallback)
            {
                foreach (var rune in span.EnumerateRunes())
                {
                    int nb = rune.EncodeToUtf8(utf8);
                    for (int k = 0; k < nb; k++) output.Add(_byteIds[utf8[k]]);
                }
            }
            else if (!prevUnk)
            {
                output.Add(_proto.UnkId);   // consecutive unknown symbols become one unk, as sentencepiece does
            }
            prevUnk = !_proto.ByteFallback;
        }
    }

    // An UNUSED piece produced by a merge is split back into the two pieces that formed it.
    private void Resegment(string piece, Dictionary<string, (string Left, string Right)> reverse, List<int> output)
    {
        int id = _pieces.TryGetValue(piece, out int v) ? v : -1;
        if (id < 0 || _proto.Types[id] != PieceType.Unused || !reverse.TryGetValue(piece, out var parts))
        {
            output.Add(id < 0 ? _proto.UnkId : id);
            return;
        }
        Resegment(parts.Left, reverse, output);
        Resegment(parts.Right, reverse, output);
    }

    private struct PieceRule(SentencePieceBpe owner, char[] text, bool trackUnused) : IBpePairRule
    {
        public Dictionary<string, (string, string)>? Reverse = trackUnused ? new(StringComparer.Ordinal) : null;

        public bool TryPair(in BpeSymbol left, in BpeSymbol right, out float key, out int mergedId)
        {
            var merged = text.AsSpan(left.Start, left.Length + right.Length);
            if (!owner._lookup.TryGetValue(merged, out mergedId))
            {
                key = 0;
                return false;
            }
            key = -owner._proto.Scores[mergedId];
            if (Reverse is not null && owner._proto.Types[mergedId] == PieceType.Unused)
                Reverse[merged.ToString()] = (text.AsSpan(left.Start, left.Length).ToString(),
                    text.AsSpan(right.Start, right.Length).ToString());
            return true;
        }
    }
}

// Finds added/special tokens (`<|begin_of_text|>`, user-defined pieces) in raw text: leftmost match,
// longest at that position, indexed by first character so plain text costs one lookup per char.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
namespace LlamaRun.Text;

// An added token of a tokenizer.json (content matched literally; lstrip/rstrip absorb whitespace around it).
internal sealed record AddedToken(string Content, int Id, bool Special, bool LStrip = false, bool RStrip = false,
    bool SingleWord = false);

internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<char, AddedToken[]> _byFirst = [];

    public AddedTokenMatcher(IEnumerable<(string Content, int Id)> tokens)
        : this(tokens.Select(t => new AddedToken(t.Content, t.Id, Special: false))) { }

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        foreach (var g in tokens.Where(t => t.Content.Length > 0).GroupBy(t => t.Content[0]))
            _byFirst[g.Key] = [.. g.OrderByDescending(t => t.Content.Length)];
    }

    public bool IsEmpty => _byFirst.Count == 0;

    // True when an added token starts at pos (the longest one wins).
    public bool MatchAt(ReadOnlySpan<char> text, int pos, out int length, out int id)
    {
        var t = Find(text, pos);
        length = t?.Content.Length ?? 0;
        id = t?.Id ?? -1;
        return t is not null;
    }

    public AddedToken? Find(ReadOnlySpan<char> text, int pos)
    {
        if (!_byFirst.TryGetValue(text[pos], out var candidates)) return null;
        foreach (var t in candidates)
        {
            if (!text[pos..].StartsWith(t.Content, StringComparison.Ordinal)) continue;
            if (t.SingleWord && !IsWordBoundary(text, pos, pos + t.Content.Length)) continue;
            return t;
        }
        return null;
    }

    // Splits text into plain segments (Token null) and added tokens, applying lstrip/rstrip to the text around.
    public void Split(ReadOnlySpan<char> text, List<(int Start, int Length, AddedToken? Token)> parts)
    {
        int segStart = 0, i = 0;
        while (i < text.Length)
        {
            var t = Find(text, i);
            if (t is null)
            {
                i++;
                continue;
            }
            int segEnd = i;
            if (t.LStrip) while (segEnd > segStart && char.IsWhiteSpace(text[segEnd - 1])) segEnd--;
            if (segEnd > segStart) parts.Add((segStart, segEnd - segStart, null));
            parts.Add((i, t.Content.Length, t));
            i += t.Content.Length;
            if (t.RStrip) while (i < text.Length && char.IsWhiteSpace(text[i])) i++;
            segStart = i;
        }
        if (segStart < text.Length) parts.Add((segStart, text.Length - segStart, null));
    }

    private static bool IsWordBoundary(ReadOnlySpan<char> text, int start, int end) =>
        (start == 0 || !char.IsLetterOrDigit(text[start - 1])) && (end >= text.Length || !char.IsLetterOrDigit(text[end]));
}

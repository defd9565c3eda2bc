// The normalizer and pre-tokenizer steps of a Hugging Face tokenizer.json that a BPE Llama tokenizer uses:
// Prepend/Replace normalizers; Split (regex or string), ByteLevel, Metaspace and Digits pre-tokenizers.
// Regexes run on one UTF-16 unit per code point so \p{L}/\p{N} see astral characters as Rust's regex does.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Runtime.CompilerServices;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace LlamaRun.Text;

internal enum SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext }

internal enum PrependScheme { Always, First, Never }

internal abstract record NormalizerStep
{
    public sealed record Prepend(string Text) : NormalizerStep;
    public sealed record Replace(string Pattern, string Content) : NormalizerStep;
}

internal abstract record PreTokenizerStep
{
    public sealed record Split(Regex Pattern, SplitBehavior Behavior) : PreTokenizerStep;
    public sealed record ByteLevel(bool AddPrefixSpace, bool UseRegex) : PreTokenizerStep;
    public sealed record Metaspace(char Replacement, PrependScheme Scheme, bool SplitOnReplacement) : PreTokenizerStep;
    public sealed record Digits(bool Individual) : PreTokenizerStep;
}

internal static class BpePreTokenizer
{
    // GPT-2's pattern, used by a ByteLevel pre-tokenizer with use_regex.
    public static readonly Regex Gpt2Pattern = new(
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    private static readonly Regex DigitRuns = new(@"\p{N}+", RegexOptions.Compiled);
    private static readonly Regex SingleDigits = new(@"\p{N}", RegexOptions.Compiled);

    public static string Normalize(string s, IReadOnlyList<NormalizerStep> steps)
    {
        foreach (var step in steps)
        {
            s = step switch
            {
                NormalizerStep.Prepend p => s.Length > 0 ? p.Text + s : s,
                NormalizerStep.Replace r => s.Replace(r.Pattern, r.Content, StringComparison.Ordinal),
                _ => s,
            };
        }
        return s;
    }

    // Runs the steps over one segment; the pieces returned are the words BPE encodes.
    public static List<ReadOnlyMemory<char>> Run(ReadOnlyMemory<char> segment, bool firstSegment,
        IReadOnlyList<PreTokenizerStep> steps)
    {
        var pieces = new List<ReadOnlyMemory<char>> { segment };
        foreach (var step in steps)
        {
            var next = new List<ReadOnlyMemory<char>>(pieces.Count * 2);
            for (int i = 0; i < pieces.Count; i++)
            {
                var p = pieces[i];
                switch (step)
                {
                    case PreTokenizerStep.Split s:
                        SplitByRegex(p, s.Pattern, s.Behavior, next);
                        break;
                    case PreTokenizerStep.ByteLevel b:
                        if (b.AddPrefixSpace && (p.Length == 0 || p.Span[0] != ' ')) p = (" " + p.Span.ToString()).AsMemory();
                        if (b.UseRegex) SplitByRegex(p, Gpt2Pattern, SplitBehavior.Isolated, next);
                        else next.Add(p);
                        break;
                    case PreTokenizerStep.Metaspace m:
                        ApplyMetaspace(p, m, firstSegment && i == 0, next);
                        break;
                    case PreTokenizerStep.Digits d:
                        SplitByRegex(p, d.Individual ? SingleDigits : DigitRuns, SplitBehavior.Isolated, next);
                        break;
                }
            }
            pieces = next;
        }
        return pieces;
    }

    private static void ApplyMetaspace(ReadOnlyMemory<char> p, PreTokenizerStep.Metaspace m, bool first,
        List<ReadOnlyMemory<char>> output)
    {
        string s = p.Span.ToString().Replace(' ', m.Replacement);
        bool prepend = m.Scheme == PrependScheme.Always || (m.Scheme == PrependScheme.First && first);
        if (prepend && s.Length > 0 && s[0] != m.Replacement) s = m.Replacement + s;
        if (!m.SplitOnReplacement)
        {
            output.Add(s.AsMemory());
            return;
        }
        int start = 0;
        for (int i = 1; i <= s.Length; i++)
        {
            if (i == s.Length || s[i] == m.Replacement)
            {
                if (i > start) output.Add(s.AsMemory(start, i - start));
                start = i;
            }
        }
    }

    // Splits by a regex with the given behaviour; astral code points are matched as single characters.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SplitByRegex(ReadOnlyMemory<char> piece, Regex regex, SplitBehavior behavior,
        List<ReadOnlyMemory<char>> output)
    {
        var span = piece.Span;
        int[]? map = null;
        ReadOnlySpan<char> subject = span;
        if (span.IndexOfAnyInRange('\uD800', '\uDFFF') >= 0) subject = CollapseAstral(span, out map);

        int last = 0;   // end of the previous match, in piece coordinates
        int cut = 0;    // MergedWithNext: start of the piece being built
        foreach (var m in regex.EnumerateMatches(subject))
        {
            if (m.Length == 0) continue;
            int start = map is null ? m.Index : map[m.Index];
            int end = map is null ? m.Index + m.Length : map[m.Index + m.Length];
            switch (behavior)
            {
                case SplitBehavior.Isolated:
                    if (start > last) output.Add(piece[last..start]);
                    output.Add(piece[start..end]);
                    break;
                case SplitBehavior.Removed:
                    if (start > last) output.Add(piece[last..start]);
                    break;
                case SplitBehavior.MergedWithPrevious:
                    output.Add(piece[last..end]);
                    break;
                case SplitBehavior.MergedWithNext:
                    if (start > cut) output.Add(piece[cut..start]);
                    cut = start;
                    break;
            }
            last = end;
        }
        int from = behavior == SplitBehavior.MergedWithNext ? cut : last;
        if (from < piece.Length) output.Add(piece[from..]);
    }

    // One UTF-16 unit per code point: an astral letter becomes 'a', digit '0', mark U+0300, anything else
    // U+E000 (private use); map[k] is the offset in the original of collapsed unit k (map[len] = end).
    private static ReadOnlySpan<char> CollapseAstral(ReadOnlySpan<char> s, out int[] map)
    {
        var buf = new char[s.Length];
        map = new int[s.Length + 1];
        int o = 0;
        for (int i = 0; i < s.Length;)
        {
            map[o] = i;
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                int cp = char.ConvertToUtf32(s[i], s[i + 1]);
                buf[o++] = CharUnicodeInfo.GetUnicodeCategory(cp) switch
                {
                    UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                        or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => 'a',
                    UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => '0',
                    UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark
                        or UnicodeCategory.EnclosingMark => '\u0300',
                    _ => '\uE000',
                };
                i += 2;
            }
            else
            {
                buf[o++] = char.IsSurrogate(s[i]) ? '\uE000' : s[i];
                i++;
            }
        }
        map[o] = s.Length;
        return buf.AsSpan(0, o);
    }

    // GPT-2's reversible byte -> printable character table.
    public static char[] ByteToChar { get; } = BuildByteTable();

    private static char[] BuildByteTable()
    {
        var table = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + extra++);
        }
        return table;
    }

    // Maps text to its byte-level form (UTF-8 bytes, each shown as one character) into dst; returns the length.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int ToByteLevel(ReadOnlySpan<char> text, Span<char> dst)
    {
        Span<byte> utf8 = stackalloc byte[4];
        int o = 0;
        foreach (var rune in text.EnumerateRunes())
        {
            int n = rune.EncodeToUtf8(utf8);
            for (int k = 0; k < n; k++) dst[o++] = ByteToChar[utf8[k]];
        }
        return o;
    }

    public static int MaxByteLevelLength(int chars) => chars * 3;   // a UTF-16 unit is at most 3 UTF-8 bytes
}

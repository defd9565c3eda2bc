// Turns a tokenizer.json "decoder" (ByteLevel; or Replace U+2581 -> ' ', ByteFallback, Fuse, Strip; or
// Metaspace) into per-token byte strings, which is what Decode and StreamingDecoder concatenate.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Text;
using System.Text.Json;
using LlamaRun.Model;

namespace LlamaRun.Text;

internal static class BpeJsonDecoder
{
    public static DecodeTable Build(string path, JsonElement decoder, string[] pieces, bool[] special)
    {
        var replaces = new List<(string From, string To)>();
        bool byteFallback = false, byteLevel = false;
        var rule = LeadingSpaceRule.Keep;
        void Add(JsonElement e)
        {
            if (e.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return;
            switch (BpeJsonLoader.Str(e, "type"))
            {
                case "Sequence":
                    foreach (var d in e.GetProperty("decoders").EnumerateArray()) Add(d);
                    break;
                case "Replace":
                    replaces.Add((BpeJsonLoader.StringPattern(path, e, "Replace decoder"), BpeJsonLoader.Str(e, "content") ?? ""));
                    break;
                case "ByteFallback":
                    byteFallback = true;
                    break;
                case "Fuse":
                    break;   // decoding concatenates anyway
                case "Strip":
                    int start = e.TryGetProperty("start", out var s) ? s.GetInt32() : 0;
                    int stop = e.TryGetProperty("stop", out var t) ? t.GetInt32() : 0;
                    if (BpeJsonLoader.Str(e, "content") != " " || start > 1 || stop != 0)
                        throw ModelFormatException.In(path, "Strip decoder other than one leading ' ' is not supported");
                    if (start == 1) rule = LeadingSpaceRule.StripFirstToken;
                    break;
                case "ByteLevel":
                    byteLevel = true;
                    break;
                case "Metaspace":
                    replaces.Add((BpeJsonLoader.Replacement(e).ToString(), " "));
                    if (BpeJsonLoader.Scheme(path, e) != PrependScheme.Never) rule = LeadingSpaceRule.StripFirstToken;
                    break;
                case var type:
                    throw ModelFormatException.In(path, $"decoder '{type}' is not supported");
            }
        }
        Add(decoder);

        var charToByte = new Dictionary<char, byte>();
        var table = BpePreTokenizer.ByteToChar;
        for (int b = 0; b < 256; b++) charToByte[table[b]] = (byte)b;

        var bytes = new byte[pieces.Length][];
        var isByte = new bool[pieces.Length];
        for (int i = 0; i < pieces.Length; i++)
        {
            string p = pieces[i];
            if (special[i])
            {
                bytes[i] = [];
                continue;
            }
            if (byteFallback && TryParseBytePiece(p, out byte value))
            {
                bytes[i] = [value];
                isByte[i] = true;
                continue;
            }
            foreach (var (from, to) in replaces) p = p.Replace(from, to, StringComparison.Ordinal);
            bytes[i] = byteLevel ? FromByteLevel(p, charToByte) : Encoding.UTF8.GetBytes(p);
        }
        return new DecodeTable(bytes, isByte, rule);
    }

    internal static bool TryParseBytePiece(string p, out byte value)
    {
        value = 0;
        return p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal) && p[5] == '>' &&
               byte.TryParse(p.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out value);
    }

    private static byte[] FromByteLevel(string p, Dictionary<char, byte> charToByte)
    {
        var output = new List<byte>(p.Length);
        foreach (char c in p)
        {
            if (charToByte.TryGetValue(c, out byte b)) output.Add(b);
            else output.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
        }
        return [.. output];
    }
}

// Incremental detokenization for generation: Append(id) returns the text that is complete so far, holding
// back the bytes of a UTF-8 character that is split across byte tokens until it is whole.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Text;

namespace LlamaRun.Text;

/// <summary>Turns token ids into text one at a time; the chunks concatenate to Tokenizer.Decode of all ids.</summary>
public sealed class StreamingDecoder
{
    private readonly Tokenizer _tokenizer;
    private readonly Decoder _utf8 = Encoding.UTF8.GetDecoder();
    private char[] _chars = new char[64];
    private bool _started;

    internal StreamingDecoder(Tokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Text completed by id (possibly empty while a multi-byte character is still incomplete).</summary>
    public string Append(int id)
    {
        _tokenizer.CheckId(id, -1);
        return Convert(_tokenizer.DecodeData.BytesOf(id, ref _started), flush: false);
    }

    /// <summary>Ends the stream: returns what is still held (U+FFFD for an unfinished character) and resets.</summary>
    public string Flush()
    {
        string rest = Convert([], flush: true);
        _utf8.Reset();
        _started = false;
        return rest;
    }

    // A byte yields at most one UTF-16 unit, plus up to 3 held-back bytes completing or failing (+4 is enough).
    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        if (_chars.Length < bytes.Length + 4) _chars = new char[Math.Max(bytes.Length + 4, _chars.Length * 2)];
        int n = _utf8.GetChars(bytes, _chars, flush);
        return n == 0 ? "" : new string(_chars, 0, n);
    }
}

// The tokenizer of a model directory: SentencePiece BPE from tokenizer.model or Hugging Face BPE from
// tokenizer.json, behind one Encode/Decode API; decoding goes through per-token bytes so UTF-8 split
// across byte tokens is reassembled. Try: Tokenizer.FromModelDirectory("models/austen").Encode("Emma").
// Tests: `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Buffers;
using System.Text;
using LlamaRun.Model;

namespace LlamaRun.Text;

// Encodes one piece of raw text (no BOS) by appending token ids.
internal interface ITokenEncoder
{
    void Encode(ReadOnlySpan<char> text, List<int> output);
}

// How the leading space that encoding added is removed on decode.
internal enum LeadingSpaceRule { Keep, StripFirstPiece, StripFirstToken }

// Per-token bytes contributed to decoded text (empty for control/special tokens).
internal sealed record DecodeTable(byte[][] Bytes, bool[] IsByte, LeadingSpaceRule Rule)
{
    // The bytes of id, with the leading space removed when it is the first token that produces text.
    public ReadOnlySpan<byte> BytesOf(int id, ref bool started)
    {
        ReadOnlySpan<byte> b = Bytes[id];
        if (started || b.IsEmpty) return b;
        started = true;
        bool strip = Rule == LeadingSpaceRule.StripFirstToken || (Rule == LeadingSpaceRule.StripFirstPiece && !IsByte[id]);
        return strip && b[0] == (byte)' ' ? b[1..] : b;
    }
}

/// <summary>A SentencePiece or Hugging Face BPE tokenizer that turns text into token ids and back.</summary>
public sealed class Tokenizer
{
    private readonly string[] _pieces;
    private readonly DecodeTable _decode;
    private readonly ITokenEncoder _encoder;
    private int _newlineId = -2;

    internal Tokenizer(string[] pieces, DecodeTable decode, ITokenEncoder encoder, int bosId, int eosId)
    {
        _pieces = pieces;
        _decode = decode;
        _encoder = encoder;
        BosId = bosId;
        EosId = eosId;
    }

    /// <summary>Number of token ids (the largest id plus one).</summary>
    public int VocabSize => _pieces.Length;

    /// <summary>Id of the beginning-of-sequence token, or -1 when the tokenizer has none.</summary>
    public int BosId { get; }

    /// <summary>Id of the end-of-sequence token, or -1 when the tokenizer has none.</summary>
    public int EosId { get; }

    /// <summary>Loads a tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face) file, chosen by its extension.</summary>
    public static Tokenizer Load(string path)
    {
        if (!File.Exists(path)) throw ModelFormatException.In(path, "tokenizer file not found");
        return Path.GetExtension(path).Equals(".json", StringComparison.OrdinalIgnoreCase)
            ? BpeJsonLoader.Load(path)
            : FromSentencePiece(path);
    }

    /// <summary>Loads dir/tokenizer.json if present, else dir/tokenizer.model.</summary>
    public static Tokenizer FromModelDirectory(string dir)
    {
        string json = Path.Combine(dir, "tokenizer.json"), model = Path.Combine(dir, "tokenizer.model");
        if (File.Exists(json)) return Load(json);
        if (File.Exists(model)) return Load(model);
        throw ModelFormatException.In(dir, "no tokenizer.json or tokenizer.model in this directory");
    }

    /// <summary>Token ids of text, with BOS first when addBos is set and the tokenizer has one.</summary>
    public int[] Encode(string text, bool addBos = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos && BosId >= 0) ids.Add(BosId);
        _encoder.Encode(text, ids);
        return [.. ids];
    }

    /// <summary>Encodes each '\n'-separated line, appending NewlineId after every line, after one BOS (the austen protocol).</summary>
    public int[] EncodeParagraphs(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int newline = NewlineId;
        var ids = new List<int>(text.Length / 3 + 2);
        if (BosId >= 0) ids.Add(BosId);
        var span = text.AsSpan();
        while (true)
        {
            int nl = span.IndexOf('\n');
            _encoder.Encode(nl < 0 ? span : span[..nl], ids);
            ids.Add(newline);
            if (nl < 0) break;
            span = span[(nl + 1)..];
        }
        return [.. ids];
    }

    /// <summary>The token that stands for a newline: the &lt;0x0A&gt; byte piece, or the one token "\n" encodes to.</summary>
    public int NewlineId
    {
        get
        {
            if (_newlineId != -2) return _newlineId;
            int id = Array.IndexOf(_pieces, "<0x0A>");
            if (id < 0)
            {
                var ids = new List<int>();
                _encoder.Encode("\n", ids);
                if (ids.Count != 1) throw new NotSupportedException("this tokenizer has no single newline token");
                id = ids[0];
            }
            return _newlineId = id;
        }
    }

    /// <summary>Text of ids; control/special tokens produce nothing and invalid UTF-8 becomes U+FFFD.</summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        for (int i = 0; i < ids.Length; i++) CheckId(ids[i], i);
        var buffer = new ArrayBufferWriter<byte>(ids.Length * 4 + 16);
        bool started = false;
        foreach (int id in ids) buffer.Write(_decode.BytesOf(id, ref started));
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>The vocabulary entry of id as stored in the tokenizer file (e.g. "▁the", "Ġthe", "&lt;0x0A&gt;").</summary>
    public string TokenToPiece(int id)
    {
        CheckId(id, -1);
        return _pieces[id];
    }

    /// <summary>A decoder that turns ids into text one at a time without ever splitting a UTF-8 character.</summary>
    public StreamingDecoder CreateStreamingDecoder() => new(this);

    internal DecodeTable DecodeData => _decode;

    internal ITokenEncoder Encoder => _encoder;

    internal void CheckId(int id, int position)
    {
        if ((uint)id >= (uint)_pieces.Length)
            throw new ArgumentException(position >= 0
                ? $"token id {id} at position {position} is outside the vocabulary [0, {_pieces.Length})"
                : $"token id {id} is outside the vocabulary [0, {_pieces.Length})");
    }

    private static Tokenizer FromSentencePiece(string path)
    {
        var proto = SentencePieceProto.Read(path);
        var encoder = new SentencePieceBpe(proto, path);
        int n = proto.Pieces.Length;
        var bytes = new byte[n][];
        var isByte = new bool[n];
        byte[] unk = Encoding.UTF8.GetBytes(proto.UnkSurface);
        for (int i = 0; i < n; i++)
        {
            switch (proto.Types[i])
            {
                case PieceType.Control:
                    bytes[i] = [];
                    break;
                case PieceType.Unknown:
                    bytes[i] = unk;
                    break;
                case PieceType.Byte:
                    BpeJsonDecoder.TryParseBytePiece(proto.Pieces[i], out byte value);   // format checked on load
                    bytes[i] = [value];
                    isByte[i] = true;
                    break;
                default:
                    bytes[i] = Encoding.UTF8.GetBytes(proto.Pieces[i].Replace(SentencePieceBpe.SpaceSymbol, ' '));
                    break;
            }
        }
        var rule = proto.AddDummyPrefix || proto.RemoveExtraWhitespaces ? LeadingSpaceRule.StripFirstPiece : LeadingSpaceRule.Keep;
        int Valid(int id) => id >= 0 && id < n ? id : -1;
        return new Tokenizer(proto.Pieces, new DecodeTable(bytes, isByte, rule), encoder, Valid(proto.BosId), Valid(proto.EosId));
    }
}

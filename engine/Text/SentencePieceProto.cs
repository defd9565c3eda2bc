// Reads a SentencePiece `tokenizer.model` (a ModelProto protobuf) with a minimal wire-format reader:
// pieces, scores, piece types, the trainer spec ids/model type and the normalizer flags. Exercised by
// `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Buffers.Binary;
using System.Text;
using LlamaRun.Model;

namespace LlamaRun.Text;

internal enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

internal sealed class SentencePieceProto
{
    public required string[] Pieces { get; init; }
    public required float[] Scores { get; init; }
    public required PieceType[] Types { get; init; }
    public int ModelType { get; init; } = 1;            // TrainerSpec.model_type: 1 unigram, 2 bpe, 3 word, 4 char
    public bool ByteFallback { get; init; }
    public bool TreatWhitespaceAsSuffix { get; init; }
    public int UnkId { get; init; }
    public int BosId { get; init; } = 1;
    public int EosId { get; init; } = 2;
    public int PadId { get; init; } = -1;
    public string UnkSurface { get; init; } = " \u2047 ";
    public string NormalizerName { get; init; } = "";
    public int CharsMapLength { get; init; }
    public bool AddDummyPrefix { get; init; } = true;
    public bool RemoveExtraWhitespaces { get; init; } = true;
    public bool EscapeWhitespaces { get; init; } = true;

    public static SentencePieceProto Read(string path)
    {
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw ModelFormatException.In(path, $"cannot read SentencePiece model ({e.Message})", e);
        }
        try { return Parse(data); }
        catch (FormatException e)
        {
            throw ModelFormatException.In(path, $"not a valid SentencePiece model: {e.Message}", e);
        }
    }

    private static SentencePieceProto Parse(ReadOnlySpan<byte> data)
    {
        var pieces = new List<string>();
        var scores = new List<float>();
        var types = new List<PieceType>();
        ReadOnlySpan<byte> trainer = default, normalizer = default;
        var r = new ProtoReader(data);
        while (!r.End)
        {
            var (field, wire) = r.Tag();
            if (field == 1 && wire == 2) ReadPiece(r.Bytes(), pieces, scores, types);
            else if (field == 2 && wire == 2) trainer = r.Bytes();
            else if (field == 3 && wire == 2) normalizer = r.Bytes();
            else r.Skip(wire);
        }
        if (pieces.Count == 0) throw new FormatException("it holds no pieces");
        if (trainer.IsEmpty) throw new FormatException($"no trainer_spec after {pieces.Count} pieces (truncated?)");

        int modelType = 1, vocabSize = pieces.Count, unk = 0, bos = 1, eos = 2, pad = -1;
        bool byteFallback = false, suffix = false;
        string unkSurface = " \u2047 ";
        r = new ProtoReader(trainer);
        while (!r.End)
        {
            var (field, wire) = r.Tag();
            switch (field)
            {
                case 3 when wire == 0: modelType = (int)r.Varint(); break;
                case 4 when wire == 0: vocabSize = (int)r.Varint(); break;
                case 24 when wire == 0: suffix = r.Varint() != 0; break;
                case 35 when wire == 0: byteFallback = r.Varint() != 0; break;
                case 40 when wire == 0: unk = (int)r.Varint(); break;
                case 41 when wire == 0: bos = (int)r.Varint(); break;
                case 42 when wire == 0: eos = (int)r.Varint(); break;
                case 43 when wire == 0: pad = (int)r.Varint(); break;
                case 44 when wire == 2: unkSurface = Encoding.UTF8.GetString(r.Bytes()); break;
                default: r.Skip(wire); break;
            }
        }

        if (vocabSize > pieces.Count)   // more pieces is fine: tools append pieces without updating the spec
            throw new FormatException($"trainer_spec.vocab_size is {vocabSize} but the file holds {pieces.Count} pieces");

        string name = "";
        int charsMap = 0;
        bool dummy = true, removeExtra = true, escape = true;
        r = new ProtoReader(normalizer);
        while (!r.End)
        {
            var (field, wire) = r.Tag();
            switch (field)
            {
                case 1 when wire == 2: name = Encoding.UTF8.GetString(r.Bytes()); break;
                case 2 when wire == 2: charsMap = r.Bytes().Length; break;
                case 3 when wire == 0: dummy = r.Varint() != 0; break;
                case 4 when wire == 0: removeExtra = r.Varint() != 0; break;
                case 5 when wire == 0: escape = r.Varint() != 0; break;
                default: r.Skip(wire); break;
            }
        }

        return new SentencePieceProto
        {
            Pieces = [.. pieces], Scores = [.. scores], Types = [.. types],
            ModelType = modelType, ByteFallback = byteFallback, TreatWhitespaceAsSuffix = suffix,
            UnkId = unk, BosId = bos, EosId = eos, PadId = pad, UnkSurface = unkSurface,
            NormalizerName = name, CharsMapLength = charsMap,
            AddDummyPrefix = dummy, RemoveExtraWhitespaces = removeExtra, EscapeWhitespaces = escape,
        };
    }

    private static void ReadPiece(ReadOnlySpan<byte> msg, List<string> pieces, List<float> scores, List<PieceType> types)
    {
        string? piece = null;
        float score = 0;
        int type = (int)PieceType.Normal;
        var r = new ProtoReader(msg);
        while (!r.End)
        {
            var (field, wire) = r.Tag();
            if (field == 1 && wire == 2) piece = Encoding.UTF8.GetString(r.Bytes());
            else if (field == 2 && wire == 5) score = r.Fixed32();
            else if (field == 3 && wire == 0) type = (int)r.Varint();
            else r.Skip(wire);
        }
        if (piece is null) throw new FormatException($"piece {pieces.Count} has no text");
        if (type < 1 || type > 6) throw new FormatException($"piece {pieces.Count} has unknown type {type}");
        pieces.Add(piece);
        scores.Add(score);
        types.Add((PieceType)type);
    }

    // Protobuf wire format: varint tags (field << 3 | wire type), varints, fixed32/64, length-delimited.
    private ref struct ProtoReader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public readonly bool End => _pos >= _data.Length;

        public (int Field, int Wire) Tag()
        {
            ulong tag = Varint();
            int field = (int)(tag >> 3);
            if (field == 0) throw new FormatException($"field number 0 at byte {_pos}");
            return (field, (int)(tag & 7));
        }

        public ulong Varint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length) throw new FormatException($"truncated varint at byte {_pos}");
                byte b = _data[_pos++];
                result |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return result;
            }
            throw new FormatException($"varint longer than 10 bytes at byte {_pos}");
        }

        public float Fixed32() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));

        public ReadOnlySpan<byte> Bytes()
        {
            ulong len = Varint();
            if (len > (ulong)(_data.Length - _pos))
                throw new FormatException($"length {len} at byte {_pos} runs past the end ({_data.Length} bytes)");
            return Take((int)len);
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Take(8); break;
                case 2: Bytes(); break;
                case 5: Take(4); break;
                default: throw new FormatException($"unsupported wire type {wire} at byte {_pos}");
            }
        }

        private ReadOnlySpan<byte> Take(int n)
        {
            if (n > _data.Length - _pos) throw new FormatException($"truncated field at byte {_pos}");
            var s = _data.Slice(_pos, n);
            _pos += n;
            return s;
        }
    }
}

// Bad tokenizer files must fail with one ModelFormatException line naming the file: truncated or garbage
// protobuf, unsupported SentencePiece model types, broken or unsupported tokenizer.json, missing files.
// Run: dotnet test tests/Tests.csproj --filter FullyQualifiedName~TokenizerErrorTests
using System.Text;
using LlamaRun.Model;
using LlamaRun.Text;
using Xunit;

namespace LlamaRun.Tests;

public sealed class TokenizerErrorTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tok-errors-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] data)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, data);
        return path;
    }

    private static void AssertOneLineNaming(string path, ModelFormatException e, string expectedFragment)
    {
        Assert.Contains(path, e.Message);
        Assert.Contains(expectedFragment, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    private static ModelFormatException LoadFails(string path) => Assert.Throws<ModelFormatException>(() => Tokenizer.Load(path));

    private static byte[] AustenModel()
    {
        string? path = SharedData.RepoPath("models/austen/tokenizer.model");
        Assert.NotNull(path);   // part of the repository
        return File.ReadAllBytes(path);
    }

    [Fact]
    public void AustenModelLoadsAndEncodes()
    {
        var tok = Tokenizer.Load(Write("tokenizer.model", AustenModel()));
        Assert.Equal(4096, tok.VocabSize);
        int[] ids = tok.Encode("It was a truth universally acknowledged.");
        Assert.Equal(1, ids[0]);
        Assert.Equal("It was a truth universally acknowledged.", tok.Decode(ids));
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(0.999)]
    [InlineData(0.0001)]
    public void TruncatedSentencePieceModelIsRejected(double keep)
    {
        byte[] full = AustenModel();
        string path = Write("tokenizer.model", full[..(int)(full.Length * keep)]);
        var e = LoadFails(path);
        AssertOneLineNaming(path, e, "not a valid SentencePiece model");
    }

    [Fact]
    public void GarbageAndEmptyModelsAreRejected()
    {
        var rng = new Random(7);
        byte[] junk = new byte[4096];
        rng.NextBytes(junk);
        string path = Write("junk.model", junk);
        AssertOneLineNaming(path, LoadFails(path), "SentencePiece");
        path = Write("empty.model", []);
        AssertOneLineNaming(path, LoadFails(path), "no pieces");
    }

    [Theory]
    [InlineData(1, "Unigram")]
    [InlineData(3, "Word")]
    [InlineData(4, "Char")]
    public void UnsupportedSentencePieceModelTypesAreRejected(int modelType, string name)
    {
        string path = Write("tokenizer.model", TinyModel(modelType));
        AssertOneLineNaming(path, LoadFails(path), $"model type {name} is not supported");
    }

    [Fact]
    public void HandBuiltBpeModelMergesByScore()
    {
        var tok = Tokenizer.Load(Write("tokenizer.model", TinyModel(2)));
        // "ab" (-4) merges before "▁a" (-6), then "▁ab"; "c" is unknown (no byte fallback) and two in a row
        // fuse into one unk, which decodes to " ⁇ ".
        Assert.Equal([1, 5, 3, 0], tok.Encode("ab cc"));
        Assert.Equal("ab  \u2047 ", tok.Decode([1, 5, 3, 0]));
    }

    [Fact]
    public void BrokenTokenizerJsonIsRejected()
    {
        (string Json, string Fragment)[] cases =
        [
            ("{ \"model\": { \"type\": \"BPE\", ", "not valid JSON"),
            ("[1, 2, 3]", "not a JSON object"),
            ("{ \"version\": \"1.0\", \"added_tokens\": [] }", "missing the \"model\" section"),
            ("{ \"model\": { \"type\": \"WordPiece\", \"vocab\": { \"a\": 0 } } }", "model type 'WordPiece' is not supported"),
            ("{ \"model\": { \"type\": \"Unigram\", \"vocab\": [[\"a\", -1.0]] } }", "model type 'Unigram' is not supported"),
            ("{ \"model\": { \"type\": \"BPE\", \"vocab\": { \"a\": 0, \"b\": 1 }, \"merges\": [\"a c\"] } }", "missing from the vocabulary"),
            ("{ \"model\": { \"type\": \"BPE\", \"vocab\": { \"a\": \"zero\" }, \"merges\": [] } }", "not a non-negative integer id"),
            ("{ \"model\": { \"type\": \"BPE\", \"vocab\": { \"a\": 0 }, \"merges\": [] }, \"normalizer\": { \"type\": \"NFKC\" } }", "normalizer 'NFKC' is not supported"),
            ("{ \"model\": { \"type\": \"BPE\", \"vocab\": { \"a\": 0 }, \"merges\": [] }, \"pre_tokenizer\": { \"type\": \"Split\", \"behavior\": \"Isolated\" } }", "unexpected JSON structure"),
        ];
        foreach (var (json, fragment) in cases)
        {
            string path = Write("tokenizer.json", Encoding.UTF8.GetBytes(json));
            AssertOneLineNaming(path, LoadFails(path), fragment);
        }
    }

    [Fact]
    public void MinimalTokenizerJsonWorks()
    {
        const string json = """
            { "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4 },
                         "merges": ["a b", ["ab", "c"]] },
              "added_tokens": [ { "id": 5, "content": "<eos>", "special": true } ] }
            """;
        var tok = Tokenizer.Load(Write("tokenizer.json", Encoding.UTF8.GetBytes(json)));
        Assert.Equal(6, tok.VocabSize);
        Assert.Equal(-1, tok.BosId);
        Assert.Equal([4, 2, 5, 0], tok.Encode("abcab<eos>a"));
        Assert.Equal("abcaba", tok.Decode([4, 2, 5, 0]));
        Assert.Throws<ArgumentException>(() => tok.Encode("abz"));   // no unk token, no byte fallback
    }

    [Fact]
    public void MissingFilesNameThePath()
    {
        string missing = Path.Combine(_dir, "nope.model");
        AssertOneLineNaming(missing, LoadFails(missing), "not found");
        var e = Assert.Throws<ModelFormatException>(() => Tokenizer.FromModelDirectory(_dir));
        AssertOneLineNaming(_dir, e, "no tokenizer.json or tokenizer.model");
    }

    /// A 7-piece SentencePiece model: <unk> <s> </s> ▁ a b ▁ab|ab with scores making "▁ab" win.
    private static byte[] TinyModel(int modelType)
    {
        var model = new MemoryStream();
        (string Piece, float Score, int Type)[] pieces =
        [
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("\u2581", -1, 1), ("a", -2, 1), ("\u2581ab", -3, 1),
            ("ab", -4, 1), ("b", -5, 1), ("\u2581a", -6, 1),
        ];
        foreach (var (piece, score, type) in pieces)
        {
            var p = new MemoryStream();
            Bytes(p, 1, Encoding.UTF8.GetBytes(piece));
            Tag(p, 2, 5);
            p.Write(BitConverter.GetBytes(score));
            Tag(p, 3, 0);
            Varint(p, (ulong)type);
            Bytes(model, 1, p.ToArray());
        }
        var trainer = new MemoryStream();
        Tag(trainer, 3, 0);
        Varint(trainer, (ulong)modelType);
        Tag(trainer, 4, 0);
        Varint(trainer, (ulong)pieces.Length);
        Bytes(model, 2, trainer.ToArray());
        var normalizer = new MemoryStream();
        Bytes(normalizer, 1, "identity"u8.ToArray());
        Tag(normalizer, 4, 0);
        Varint(normalizer, 0);   // keep extra whitespace
        Bytes(model, 3, normalizer.ToArray());
        return model.ToArray();
    }

    private static void Tag(Stream s, int field, int wire) => Varint(s, (ulong)(field << 3 | wire));

    private static void Bytes(Stream s, int field, byte[] data)
    {
        Tag(s, field, 2);
        Varint(s, (ulong)data.Length);
        s.Write(data);
    }

    private static void Varint(Stream s, ulong v)
    {
        for (; v >= 0x80; v >>= 7) s.WriteByte((byte)(v | 0x80));
        s.WriteByte((byte)v);
    }
}

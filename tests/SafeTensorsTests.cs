// Safetensors reader, writer and sharded checkpoints: round trips, the hf-tiny fixtures, and hand-made bad files.
// Run: dotnet test tests/Tests.csproj --filter SafeTensorsTests
using System.Buffers.Binary;
using System.Text;
using LlamaRun.Core;
using LlamaRun.Model;
using Xunit;
using static LlamaRun.Tests.LoaderTestSupport;

namespace LlamaRun.Tests;

public class SafeTensorsTests
{
    internal static byte[] Raw(string header, int dataBytes, ulong? lengthField = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, lengthField ?? (ulong)h.Length);
        h.CopyTo(b, 8);
        return b;
    }

    private static void Bad(byte[] file, params string[] fragments)
    {
        using var dir = new LoaderTempDir();
        string path = dir.Write("bad.safetensors", file);
        AssertModelError(() => SafeTensorsFile.Open(path).Dispose(), path, fragments);
    }

    [Fact]
    public void WriterRoundTripsEveryDtypeAndPadsHeader()
    {
        using var dir = new LoaderTempDir();
        string path = dir.File("rt.safetensors");
        float[] f = [1.5f, -2.25f, 3e-3f, 65504f, float.NegativeInfinity, 0f];
        SafeTensorsWriter.Write(path,
        [
            SafeTensorsEntry.FromBytes("flags", "U8", [3], [1, 2, 255]),
            SafeTensorsEntry.FromFloats("half", DType.F16, [2, 3], f),
            SafeTensorsEntry.FromFloats("brain", DType.BF16, [3, 2], f),
            SafeTensorsEntry.FromFloats("full", DType.F32, [6], f),
            SafeTensorsEntry.FromInt64("ids", [2], [7, -9]),
            SafeTensorsEntry.FromFloats("empty", DType.F32, [0, 4], []),
            SafeTensorsEntry.FromFloats("scalar", DType.F32, [], [42f]),
        ], new Dictionary<string, string> { ["format"] = "pt" });

        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal(0UL, (8 + BinaryPrimitives.ReadUInt64LittleEndian(bytes)) % 8);
        using var st = SafeTensorsFile.Open(path);
        Assert.Equal(7, st.Tensors.Count);
        Assert.Equal("pt", st.Metadata["format"]);
        Assert.Equal(f, st.ReadF32("full"));
        Assert.Equal(f.Select(x => DTypes.F16ToF32(DTypes.F32ToF16(x))), st.ReadF32("half"));
        Assert.Equal(f.Select(x => DTypes.BF16ToF32(DTypes.F32ToBF16(x))), st.ReadF32("brain"));
        Assert.Equal([7L, -9L], st.ReadI64("ids"));
        Assert.Equal([1L, 2L, 255L], st.ReadI64("flags"));
        Assert.Empty(st.ReadF32("empty"));
        Assert.Equal([42f], st.ReadF32("scalar"));
        Assert.Equal([2L, 3L], st.Tensors["half"].Shape);
        Assert.Equal(DType.BF16, st.Tensors["brain"].WeightDType);
        Assert.Null(st.Tensors["ids"].WeightDType);
        foreach (var t in st.Tensors.Values)   // larger elements first keeps every tensor aligned to its element size
        {
            Assert.Equal(0, t.ByteOffset % SafeTensorsHeader.DTypeSize(t.DTypeName));
            Assert.Equal(t.ByteLength, st.Bytes(t.Name).Length);
        }
        unsafe
        {
            Assert.Equal(1.5f, *(float*)st.DataPointer("full"));
        }
        AssertModelError(() => st.ReadF32("ids"), path, "\"ids\"", "expected dtype F32, F16 or BF16, got I64");
        AssertModelError(() => st.ReadI64("full"), path, "\"full\"", "got F32");
        AssertModelError(() => st.Info("nope"), path, "\"nope\" not found");
    }

    [Fact]
    public void RandomEntriesAreSeededAndStreamed()
    {
        using var dir = new LoaderTempDir();
        string a = dir.File("a.safetensors"), b = dir.File("b.safetensors");
        SafeTensorsWriter.Write(a, [SafeTensorsEntry.Random("w", DType.BF16, [300, 700], 5, 0.5f)]);
        SafeTensorsWriter.Write(b, [SafeTensorsEntry.Random("w", DType.BF16, [300, 700], 5, 0.5f)]);
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        using var st = SafeTensorsFile.Open(a);
        var w = st.ReadF32("w");
        Assert.Equal(210_000, w.Length);
        Assert.All(w, x => Assert.InRange(x, -0.5f, 0.5f));
        Assert.InRange(w.Select(x => (double)x * x).Average(), 0.07, 0.097);   // uniform in [-0.5, 0.5]: E[x^2] = 1/12
    }

    [Fact]
    public void WriterRefusesWrongByteCountsAndDuplicateNames()
    {
        using var dir = new LoaderTempDir();
        Assert.Throws<InvalidOperationException>(() =>
            SafeTensorsWriter.Write(dir.File("x"), [SafeTensorsEntry.FromBytes("a", "F32", [2], new byte[4])]));
        Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(dir.File("y"), [SafeTensorsEntry.FromBytes("a", "U8", [1], [1]), SafeTensorsEntry.FromBytes("a", "U8", [1], [1])]));
    }

    [Fact]
    public void ReadsHfTinyFixtures()
    {
        foreach (var v in HfTinyVariants)
        {
            using var ck = Checkpoint.Open(Path.Combine(HfTiny, v));
            Assert.Equal(2 + 2 * 9 + 1, ck.Tensors.Count);
            var dtype = v == "default-bf16" ? DType.BF16 : DType.F32;
            Assert.Equal(dtype, ck.Info("model.embed_tokens.weight").WeightDType);
            Assert.Equal([32L, 64L], ck.Info("model.layers.1.self_attn.k_proj.weight").Shape);
            Assert.Equal([64L, 160L], ck.Info("model.layers.0.mlp.down_proj.weight").Shape);
            Assert.Equal("pt", Assert.Single(ck.Files).Metadata["format"]);

            using var reference = SafeTensorsFile.Open(Path.Combine(HfTiny, v, "reference.safetensors"));
            long[] ids = reference.ReadI64("input_ids");
            Assert.Equal(200, ids.Length);
            Assert.All(ids, id => Assert.InRange(id, 0, 255));
            float[] logits = reference.ReadF32("logits");
            Assert.Equal(200 * 256, logits.Length);
            Assert.All(logits, x => Assert.True(float.IsFinite(x)));
        }
    }

    [Fact]
    public void BadLengthField()
    {
        Bad([1, 2, 3, 4, 5], "5 bytes, expected at least 8");
        Bad(Raw("{}", 0, lengthField: 1UL << 40), "header length 1099511627776 exceeds the 100 MB limit");
        Bad(Raw("{}", 0, lengthField: ulong.MaxValue), "exceeds the 100 MB limit");
        Bad(Raw("{}", 4, lengthField: 100), "header length 100 exceeds the 6 bytes after the length field");
        var whole = Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
        Bad(whole[..20], "exceeds the 12 bytes after the length field (truncated file?)");
    }

    [Fact]
    public void BadHeaderJson()
    {
        Bad(Raw("{\"a\":{\"dtype\":\"F32\",", 0), "header is not valid JSON");
        Bad(Raw("", 0), "header is not valid JSON");
        Bad(Raw("[1,2]", 0), "header must be a JSON object, got array");
        var h = Raw("{\"\u00e9\":{}}", 0);
        h[10] = 0xC3; h[11] = 0x28;   // overlong/invalid UTF-8 pair inside the key
        Bad(h, "header is not valid UTF-8");
        Bad(Raw("{\"__metadata__\":{\"a\":1}}", 0), "\"__metadata__\" key \"a\" must be a string, got number");
        Bad(Raw("{\"__metadata__\":[]}", 0), "\"__metadata__\" must be an object of strings");
        Bad(Raw("{\"a\":5}", 0), "tensor \"a\": entry must be an object, got number");
        Bad(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "tensor \"a\": entry needs dtype, shape and data_offsets");
        Bad(Raw("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "key \"dtype\" is listed twice");
        Bad(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4), "unknown key \"extra\"");
    }

    [Fact]
    public void BadTensorEntries()
    {
        static string E(string name, string dtype, string shape, string offsets) =>
            $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}";
        Bad(Raw("{" + E("w", "Q4_K", "[2]", "[0,2]") + "}", 2), "tensor \"w\": unknown dtype \"Q4_K\"");
        Bad(Raw("{" + E("w", "F32", "[2,3]", "[0,16]") + "}", 16), "tensor \"w\": F32[2, 3] needs 24 bytes, data_offsets [0, 16] give 16");
        Bad(Raw("{" + E("w", "F32", "[-1]", "[0,4]") + "}", 4), "tensor \"w\": shape[0] must be a non-negative integer, got -1");
        Bad(Raw("{" + E("w", "F32", "[1.5]", "[0,4]") + "}", 4), "shape[0] must be a non-negative integer, got 1.5");
        Bad(Raw("{" + E("w", "F32", "\"4\"", "[0,4]") + "}", 4), "shape must be an array of non-negative integers, got string");
        Bad(Raw("{" + E("w", "F32", "[4294967296,4294967296,4294967296]", "[0,4]") + "}", 4), "has too many elements");
        Bad(Raw("{" + E("w", "F64", "[2305843009213693952]", "[0,4]") + "}", 4), "is too large for F64");
        Bad(Raw("{" + E("w", "F32", "[2]", "[0,8]") + "}", 4), "tensor \"w\": data_offsets [0, 8] run past the 4-byte data section");
        Bad(Raw("{" + E("w", "F32", "[1]", "[8,4]") + "}", 16), "data_offsets [8, 4] end before they begin");
        Bad(Raw("{" + E("w", "F32", "[1]", "[0,4,8]") + "}", 16), "data_offsets must hold 2 integers, got 3");
        Bad(Raw("{" + E("a", "F32", "[2]", "[0,8]") + "," + E("b", "F32", "[2]", "[4,12]") + "}", 12),
            "tensors \"a\" and \"b\" overlap in the data section");
        Bad(Raw("{" + E("a", "F32", "[1]", "[0,4]") + "," + E("a", "F32", "[1]", "[4,8]") + "}", 8), "tensor \"a\" is listed twice in the header");
        Bad(Raw("{" + E("a\nb", "F32", "[1]", "[0,4]").Replace("\n", "\\n") + "," + E("a\nb", "F32", "[1]", "[4,8]").Replace("\n", "\\n") + "}", 8),
            "tensor \"a\\u000ab\" is listed twice");
    }

    [Fact]
    public void MissingFilesAndDirectories()
    {
        using var dir = new LoaderTempDir();
        string missing = dir.File("none.safetensors");
        AssertModelError(() => SafeTensorsFile.Open(missing), missing, "cannot open");
        AssertModelError(() => Checkpoint.Open(dir.Path), dir.Path, "neither model.safetensors nor model.safetensors.index.json");
        AssertModelError(() => Checkpoint.Open(missing), missing, "no such model directory");
    }

    private static void WriteShards(LoaderTempDir dir, string index)
    {
        SafeTensorsWriter.Write(dir.File("s1.safetensors"),
            [SafeTensorsEntry.FromFloats("a", DType.F32, [2], [1, 2]), SafeTensorsEntry.FromFloats("b", DType.BF16, [1], [3])]);
        SafeTensorsWriter.Write(dir.File("s2.safetensors"), [SafeTensorsEntry.FromFloats("c", DType.F16, [2, 1], [4, 5])]);
        dir.Write(Checkpoint.IndexFileName, index);
    }

    private const string GoodIndex =
        "{\"metadata\":{\"total_size\":14},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}";

    [Fact]
    public void ShardedCheckpointMergesShards()
    {
        using var dir = new LoaderTempDir();
        WriteShards(dir, GoodIndex);
        using var ck = Checkpoint.Open(dir.Path);
        Assert.Equal(2, ck.Files.Count);
        Assert.Equal(["a", "b", "c"], ck.Tensors.Keys.Order());
        Assert.Equal([1f, 2f], ck.ReadF32("a"));
        Assert.Equal([3f], ck.ReadF32("b"));
        Assert.Equal([4f, 5f], ck.ReadF32("c"));
        Assert.EndsWith("s2.safetensors", ck.FileOf("c").Path);
        AssertModelError(() => ck.Info("d"), ck.Source, "tensor \"d\" not found in checkpoint");
    }

    [Fact]
    public void BadShardIndexes()
    {
        void BadIndex(string index, Func<LoaderTempDir, string> file, params string[] fragments)
        {
            using var dir = new LoaderTempDir();
            WriteShards(dir, index);
            AssertModelError(() => Checkpoint.Open(dir.Path).Dispose(), file(dir), fragments);
        }
        Func<LoaderTempDir, string> idx = d => d.File(Checkpoint.IndexFileName);
        BadIndex(GoodIndex.Replace("s2.safetensors", "s3.safetensors"), idx, "shard \"s3.safetensors\" listed in weight_map does not exist");
        BadIndex(GoodIndex.Replace("\"c\":\"s2", "\"c\":\"s1"), d => d.File("s1.safetensors"), "tensor \"c\" mapped to this shard by model.safetensors.index.json is not in it");
        BadIndex(GoodIndex.Replace(",\"b\":\"s1.safetensors\"", ""), d => d.File("s1.safetensors"), "tensor \"b\" is in this shard but");
        BadIndex(GoodIndex.Replace("s2.safetensors", "../s2.safetensors"), idx, "is not a plain file name");
        BadIndex("{\"weight_map\":", idx, "index is not valid JSON");
        BadIndex("{\"weight_map\":[]}", idx, "index needs a \"weight_map\" object");
        BadIndex("{\"weight_map\":{\"a\":1}}", idx, "weight_map[\"a\"] must be a shard file name, got Number");
        BadIndex("{\"weight_map\":{}}", idx, "weight_map is empty");
        BadIndex("{\"weight_map\":{\"a\":\"s1.safetensors\",\"a\":\"s1.safetensors\"}}", idx, "lists tensor \"a\" twice");
    }
}

// LlamaWeights: strict loading of HF-named tensors onto a recording fake backend (fixtures, tied/untied, sharded, bad checkpoints).
// Run: dotnet test tests/Tests.csproj --filter WeightsTests
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using static LlamaRun.Tests.LoaderTestSupport;

namespace LlamaRun.Tests;

// Records every upload and free; aliases host pointers like the CPU backend. Compute ops are not needed here.
internal sealed class RecordingBackend(int failAfterUploads = int.MaxValue) : IBackend
{
    public readonly List<(DType DType, int Rows, int Cols, nint Pointer)> Uploads = [];
    public int Freed;

    public string Name => "recording";
    public BackendCapabilities Capabilities { get; } = new(PrefillChunk: 512, StackedDecodeProjections: false, DeviceMemory: false);
    public int KvElementSize => 4;
    public long FreeMemoryBytes => 0;
    public void Round(Tensor x, DType dtype) => throw new NotSupportedException();
    public string Device => "none";

    public Tensor Upload(DType dtype, int rows, int cols, nint hostData)
    {
        if (Uploads.Count >= failAfterUploads) throw new OutOfMemoryException("device full (test)");
        Uploads.Add((dtype, rows, cols, hostData));
        return new Tensor(this, dtype, rows, cols, hostData, _ => Freed++);
    }

    public Tensor Alloc(DType dtype, int rows, int cols) => throw new NotSupportedException();
    public void Download(Tensor src, Span<float> dst) => throw new NotSupportedException();
    public KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim, bool farKeys = false) => throw new NotSupportedException();
    public void Embedding(ReadOnlySpan<int> tokens, Tensor table, Tensor dst) => throw new NotSupportedException();
    public void RmsNorm(Tensor x, Tensor weight, Tensor dst, float eps, DType compute = DType.F32) => throw new NotSupportedException();
    public void AddRmsNorm(Tensor x, Tensor y, Tensor weight, Tensor dst, float eps, DType compute = DType.F32) => throw new NotSupportedException();
    public void MatMul(Tensor x, Tensor weight, Tensor dst) => throw new NotSupportedException();
    public void MatMulSwiGlu(Tensor x, Tensor gateUp, Tensor dst) => throw new NotSupportedException();
    public void MatMulRope(Tensor x, Tensor qkv, Tensor dst, KvCache cache, int layer, int startPos, RopeTable table) => throw new NotSupportedException();
    public void Rope(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int startPos, RopeTable table, DType compute = DType.F32, Tensor? qFar = null) => throw new NotSupportedException();
    public void Attention(Tensor q, KvCache cache, int layer, int startPos, Tensor dst, DType compute = DType.F32, FarQueries? far = null) => throw new NotSupportedException();
    public void RerotateCache(KvCache cache, int length, RopeTable from, RopeTable to) => throw new NotSupportedException();
    public void SwiGlu(Tensor gate, Tensor up, Tensor dst, DType compute = DType.F32) => throw new NotSupportedException();
    public void Add(Tensor x, Tensor y, Tensor dst) => throw new NotSupportedException();
    public void Argmax(Tensor x, Span<int> dst) => throw new NotSupportedException();
    public void Synchronize() { }
    public void Dispose() { }
}

public class WeightsTests
{
    private static readonly LlamaConfig Tiny = new()
    {
        HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1,
        HeadDim = 4, VocabSize = 10, RmsNormEps = 1e-5f, MaxPositionEmbeddings = 32, TieWordEmbeddings = false,
        Rope = new RopeParameters(),
    };

    // name -> shape of every tensor a checkpoint for Tiny holds.
    private static Dictionary<string, long[]> TinyShapes(bool withLmHead = true)
    {
        var s = new Dictionary<string, long[]> { ["model.embed_tokens.weight"] = [10, 8], ["model.norm.weight"] = [8] };
        if (withLmHead) s["lm_head.weight"] = [10, 8];
        for (int i = 0; i < 2; i++)
        {
            string p = $"model.layers.{i}.";
            s[p + "input_layernorm.weight"] = [8];
            s[p + "post_attention_layernorm.weight"] = [8];
            s[p + "self_attn.q_proj.weight"] = [8, 8];
            s[p + "self_attn.k_proj.weight"] = [4, 8];
            s[p + "self_attn.v_proj.weight"] = [4, 8];
            s[p + "self_attn.o_proj.weight"] = [8, 8];
            s[p + "mlp.gate_proj.weight"] = [12, 8];
            s[p + "mlp.up_proj.weight"] = [12, 8];
            s[p + "mlp.down_proj.weight"] = [8, 12];
        }
        return s;
    }

    private static string WriteTiny(LoaderTempDir dir, Dictionary<string, long[]> shapes, DType dtype = DType.BF16, string? oddDtypeTensor = null)
    {
        string path = dir.File("model.safetensors");
        int seed = 0;
        SafeTensorsWriter.Write(path, shapes.Select(kv => kv.Key == oddDtypeTensor
            ? SafeTensorsEntry.FromBytes(kv.Key, "I32", kv.Value, new byte[4 * kv.Value.Aggregate(1L, (a, b) => a * b)])
            : SafeTensorsEntry.Random(kv.Key, dtype, kv.Value, seed++, 1f)));
        return path;
    }

    [Fact]
    public void LoadsHfTinyAliasingTheMapping()
    {
        foreach (var v in new[] { "default", "default-bf16" })
        {
            string dir = Path.Combine(HfTiny, v);
            var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
            var backend = new RecordingBackend();
            using var ck = Checkpoint.Open(dir);
            var w = LlamaWeights.Load(dir, config, backend);
            var dtype = v == "default" ? DType.F32 : DType.BF16;
            Assert.Equal(2, w.Layers.Length);
            Assert.Equal((dtype, 256, 64), (w.EmbedTokens.DType, w.EmbedTokens.Rows, w.EmbedTokens.Cols));
            Assert.Equal((dtype, 32, 64), (w.Layers[1].KProj.DType, w.Layers[1].KProj.Rows, w.Layers[1].KProj.Cols));
            Assert.Equal((64, 160), (w.Layers[0].DownProj.Rows, w.Layers[0].DownProj.Cols));
            Assert.Equal((DType.F32, 1, 64), (w.Norm.DType, w.Norm.Rows, w.Norm.Cols));
            Assert.Equal((DType.F32, 1, 64), (w.Layers[1].PostAttentionLayernorm.DType, w.Layers[1].PostAttentionLayernorm.Rows, w.Layers[1].PostAttentionLayernorm.Cols));
            Assert.NotSame(w.EmbedTokens, w.LmHead);
            Assert.Equal(2 + 2 * 9 + 1, backend.Uploads.Count);
            Assert.Equal(backend.Uploads.Sum(u => (long)u.Rows * u.Cols * u.DType.Size()), w.WeightBytes);

            // Matrices are the mapped checkpoint bytes themselves; norms are F32 copies of the file's values.
            var qBytes = ck.Bytes("model.layers.0.self_attn.q_proj.weight");
            unsafe
            {
                var uploaded = new ReadOnlySpan<byte>((void*)w.Layers[0].QProj.Pointer, (int)w.Layers[0].QProj.ByteLength);
                Assert.True(uploaded.SequenceEqual(qBytes));
                var norm = new ReadOnlySpan<float>((void*)w.Layers[1].InputLayernorm.Pointer, 64);
                Assert.Equal(ck.ReadF32("model.layers.1.input_layernorm.weight"), norm.ToArray());
                Assert.Equal(0, w.Norm.Pointer % 64);
            }
            w.Dispose();
            Assert.Equal(backend.Uploads.Count, backend.Freed);
        }
    }

    [Fact]
    public void LoadsAustenAndTiedStories260K()
    {
        string austen = Path.Combine(RepoRoot, "models", "austen");
        using (var w = LlamaWeights.Load(austen, LlamaConfigReader.Read(austen), new RecordingBackend()))
        {
            Assert.Equal(6, w.Layers.Length);
            Assert.Equal(DType.BF16, w.LmHead.DType);
            Assert.NotSame(w.EmbedTokens, w.LmHead);
        }
        if (SharedPath("models/stories260K") is not { } stories) return;
        var backend = new RecordingBackend();
        using var s = LlamaWeights.Load(stories, LlamaConfigReader.Read(stories), backend);
        Assert.Same(s.EmbedTokens, s.LmHead);
        Assert.Equal(5, s.Layers.Length);
        Assert.Equal((DType.F32, 512, 64), (s.LmHead.DType, s.LmHead.Rows, s.LmHead.Cols));
        Assert.Equal(1 + 5 * 9 + 1, backend.Uploads.Count);
        long perLayer = (64 * 64 + 32 * 64 + 32 * 64 + 64 * 64) + 3 * 64 * 172 + 2 * 64;   // q k v o, gate up down, 2 norms
        Assert.Equal(4 * (512 * 64 + 5 * perLayer + 64), s.WeightBytes);
    }

    [Fact]
    public void TiedAndUntiedSyntheticCheckpoints()
    {
        using var dir = new LoaderTempDir();
        WriteTiny(dir, TinyShapes(withLmHead: false));
        var tied = Tiny with { TieWordEmbeddings = true };
        using (var w = LlamaWeights.Load(dir.Path, tied, new RecordingBackend()))
            Assert.Same(w.EmbedTokens, w.LmHead);
        string path = dir.File("model.safetensors");
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()), path,
            "tensor \"lm_head.weight\" is missing and config.json has tie_word_embeddings false");

        WriteTiny(dir, TinyShapes(withLmHead: true), DType.F16);
        using (var w = LlamaWeights.Load(dir.Path, tied, new RecordingBackend()))
            Assert.Same(w.EmbedTokens, w.LmHead);   // present but tied: checked, embedding used
        using (var w = LlamaWeights.Load(path, Tiny, new RecordingBackend()))
            Assert.Equal(DType.F16, w.LmHead.DType);
    }

    [Fact]
    public void RotaryBuffersAreIgnoredOtherExtrasRefused()
    {
        using var dir = new LoaderTempDir();
        var shapes = TinyShapes();
        shapes["model.layers.0.self_attn.rotary_emb.inv_freq"] = [2];
        shapes["model.rotary_emb.inv_freq"] = [2];
        WriteTiny(dir, shapes, DType.F32);
        using (var w = LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()))
            Assert.Equal(2, w.Ignored.Count);

        shapes["model.layers.2.mlp.up_proj.weight"] = [12, 8];
        string path = WriteTiny(dir, shapes, DType.F32);
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()), path,
            "unexpected tensor \"model.layers.2.mlp.up_proj.weight\" (F32[12, 8]); config.json describes 2 Llama layers");
    }

    [Fact]
    public void MissingWrongShapeOrDtypeNamesFileTensorAndExpectation()
    {
        using var dir = new LoaderTempDir();
        var shapes = TinyShapes();
        shapes.Remove("model.layers.1.self_attn.v_proj.weight");
        string path = WriteTiny(dir, shapes);
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()), path,
            "tensor \"model.layers.1.self_attn.v_proj.weight\" is missing (expected [4, 8])");

        shapes = TinyShapes();
        shapes["model.layers.0.self_attn.k_proj.weight"] = [8, 8];
        WriteTiny(dir, shapes);
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()), path,
            "tensor \"model.layers.0.self_attn.k_proj.weight\": expected shape [4, 8], got [8, 8]");

        shapes = TinyShapes();
        shapes["model.norm.weight"] = [1, 8];
        WriteTiny(dir, shapes);
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, new RecordingBackend()), path,
            "tensor \"model.norm.weight\": expected shape [8], got [1, 8]");

        WriteTiny(dir, TinyShapes(), oddDtypeTensor: "model.layers.1.mlp.gate_proj.weight");
        var backend = new RecordingBackend();
        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny, backend), path,
            "tensor \"model.layers.1.mlp.gate_proj.weight\": expected dtype F32, F16 or BF16, got I32");
        Assert.Equal(backend.Uploads.Count, backend.Freed);   // a failed load releases what it uploaded

        AssertModelError(() => LlamaWeights.Load(dir.Path, Tiny with { VocabSize = 11 }, new RecordingBackend()), path,
            "tensor \"model.embed_tokens.weight\": expected shape [11, 8], got [10, 8]");
    }

    [Fact]
    public void RandomCheckpointRoundTrips()
    {
        foreach (var (tied, dtype) in new[] { (true, DType.F32), (false, DType.BF16), (false, DType.F16) })
        {
            using var dir = new LoaderTempDir();
            var config = Tiny with { TieWordEmbeddings = tied, NumHiddenLayers = 3 };
            CheckpointWriter.WriteRandom(dir.Path, config, dtype, seed: 3);
            var read = LlamaConfigReader.Read(dir.Path);
            ConfigTests.AssertSameConfig(config, read);
            var backend = new RecordingBackend();
            using var w = LlamaWeights.Load(dir.Path, read, backend);
            Assert.Equal(tied, ReferenceEquals(w.EmbedTokens, w.LmHead));
            Assert.All(backend.Uploads.Where(u => u.Rows > 1), u => Assert.Equal(dtype, u.DType));
            unsafe
            {
                var q = new ReadOnlySpan<byte>((void*)w.Layers[2].QProj.Pointer, (int)w.Layers[2].QProj.ByteLength);
                Assert.Contains(q.ToArray(), b => b != 0);
                var norm = new ReadOnlySpan<float>((void*)w.Norm.Pointer, 8).ToArray();
                Assert.All(norm, x => Assert.InRange(x, 0.94f, 1.06f));
            }
        }
    }

    // Random weights for a shape alone: what a checkpoint of the shape holds, the same values in every instance and for
    // any range asked (a rank's rows are the whole tensor's rows), norms near 1, matrices within +-1/sqrt(in).
    [Fact]
    public void RandomWeightsLoadAsACheckpointOfTheShape()
    {
        var config = Tiny with { NumHiddenLayers = 3 };
        using var a = new RandomWeights(config, DType.BF16, seed: 5);
        using var b = new RandomWeights(config, DType.BF16, seed: 5);
        using var other = new RandomWeights(config, DType.BF16, seed: 6);
        Assert.Equal(CheckpointWriter.Tensors(config).Select(t => t.Name).Order(), a.Tensors.Keys.Order());
        const string q = "model.layers.2.self_attn.q_proj.weight";
        long bytes = a.Tensors[q].ByteLength;
        unsafe
        {
            var whole = new ReadOnlySpan<ushort>((void*)a.Data(q, 0, bytes), (int)(bytes / 2)).ToArray();
            var again = new ReadOnlySpan<ushort>((void*)b.Data(q, 0, bytes), (int)(bytes / 2)).ToArray();
            var rows = new ReadOnlySpan<ushort>((void*)b.Data(q, 2 * 8 * 2, 4 * 8 * 2), 4 * 8).ToArray();   // rows 2..5 of [8, 8]
            var different = new ReadOnlySpan<ushort>((void*)other.Data(q, 0, bytes), (int)(bytes / 2)).ToArray();
            Assert.Equal(whole, again);
            Assert.Equal(whole[16..48], rows);
            Assert.NotEqual(whole, different);
            Assert.All(whole, w => Assert.InRange(Math.Abs(DTypes.BF16ToF32(w)), 0f, 1f / MathF.Sqrt(8) * 1.01f));
        }
        Assert.All(a.ReadF32("model.norm.weight"), x => Assert.InRange(x, 0.94f, 1.06f));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Data(q, 0, bytes + 2));

        var backend = new RecordingBackend();
        using (var w = LlamaWeights.Load(new RandomWeights(config, DType.BF16, seed: 5), config, backend))
        {
            Assert.Equal(3, w.Layers.Length);
            Assert.All(backend.Uploads.Where(u => u.Rows > 1), u => Assert.Equal(DType.BF16, u.DType));
        }
        Assert.Equal(backend.Uploads.Count, backend.Freed);
    }

    [Fact]
    public void ShapesAreTheCheckpointsConfigs()
    {
        var l70 = LlamaShapes.Get("llama2-70b");
        Assert.Equal((8192, 28672, 80, 64, 8, 32000, 128), (l70.HiddenSize, l70.IntermediateSize, l70.NumHiddenLayers, l70.NumAttentionHeads,
            l70.NumKeyValueHeads, l70.VocabSize, l70.HeadDim));
        using var w7 = new RandomWeights(LlamaShapes.Get("Llama2-7B"), DType.BF16, 1);
        Assert.Equal(2 * 6_738_415_616L, w7.TotalBytes);   // 6,738,415,616 parameters in bf16
        var e = Assert.Throws<ArgumentException>(() => LlamaShapes.Get("llama9"));
        Assert.Contains("llama2-7b", e.Message);
    }

    [Fact]
    public void BackendFailureMidLoadReleasesEverything()
    {
        using var dir = new LoaderTempDir();
        WriteTiny(dir, TinyShapes());
        var backend = new RecordingBackend(failAfterUploads: 7);
        Assert.Throws<OutOfMemoryException>(() => LlamaWeights.Load(dir.Path, Tiny, backend));
        Assert.Equal(7, backend.Freed);
    }

    [Fact]
    public void ShardedCheckpointLoadsLikeSingleFile()
    {
        using var dir = new LoaderTempDir();
        var shapes = TinyShapes();
        var names = shapes.Keys.Order(StringComparer.Ordinal).ToArray();
        var map = new Dictionary<string, string>();
        for (int part = 0; part < 3; part++)
        {
            string shard = $"model-0000{part + 1}-of-00003.safetensors";
            var mine = names.Where((_, i) => i % 3 == part).ToArray();
            SafeTensorsWriter.Write(dir.File(shard), mine.Select(n => SafeTensorsEntry.Random(n, DType.BF16, shapes[n], n.Length, 1f)));
            foreach (var n in mine) map[n] = shard;
        }
        dir.Write(Checkpoint.IndexFileName, "{\"weight_map\":{" + string.Join(",", map.Select(kv => $"\"{kv.Key}\":\"{kv.Value}\"")) + "}}");
        var backend = new RecordingBackend();
        using var w = LlamaWeights.Load(dir.Path, Tiny, backend);
        Assert.Equal(names.Length, backend.Uploads.Count);
        Assert.Equal((12, 8), (w.Layers[1].UpProj.Rows, w.Layers[1].UpProj.Cols));
    }
}

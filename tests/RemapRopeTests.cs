// Index-remap RoPE (ReRoPE, Leaky ReRoPE, Self-Extend, DPE): the remapped relative positions against ROPE.md's vectors,
// the CPU backend's Rope + Attention against a direct O(T^2) computation of the remapped scores (prefill in chunks and
// decode, GQA, partial rotary, up to T = 4096), the model with a remap, the default retrieving the passkey at 4x,
// --rope specs, table files, and the clear refusals.
// Run: dotnet test tests/Tests.csproj --filter RemapRopeTests
using LlamaRun.Backends.Cpu;
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using DeviceRope = LlamaRun.Kernels.Device.RopeMath;
using Xunit;

namespace LlamaRun.Tests;

public unsafe class RemapRopeTests
{
    private static float[] Row(RopeRemap r, int pair, int query) => Enumerable.Range(0, query + 1).Select(j => r.Distance(pair, query, j)).ToArray();

    [Fact]
    public void DistancesMatchRopeMdVectors()
    {
        var inf = new[] { float.PositiveInfinity };
        Assert.Equal([4, 4, 4, 4, 4, 4, 4, 4, 3, 2, 1, 0], Row(new RopeRemap("rerope", 4, inf), 0, 11));
        Assert.Equal([7.5f, 7, 6.5f, 6, 5.5f, 5, 4.5f, 4, 3, 2, 1, 0], Row(new RopeRemap("leaky", 4, [2f], floor: false), 0, 11));
        Assert.Equal([7, 7, 6, 6, 5, 5, 4, 4, 3, 2, 1, 0], Row(new RopeRemap("selfextend", 4, [2f]), 0, 11));
        var g4 = new RopeRemap("selfextend", 1024, [4f]);
        Assert.Equal(4863, g4.Distance(0, 16383, 0));
        Assert.Equal(1024, g4.Distance(0, 16383, 15359));
        Assert.Equal(1023, g4.Distance(0, 16383, 15360));
        Assert.Equal(4095.2f, new RopeRemap("selfextend", 1024, [5f]).Distance(0, 16383, 0), 2);

        // DPE, README's Llama-3-8B setting: 8 groups of 8 pairs.
        var dpe = RemapRope.Dpe(128, 500000, 131072, [4, 4, 2, 16, 32, 32, 16, 128], 1024).Remap!;
        Assert.Equal([33535f, 33535, 66047, 9151, 5087, 5087, 9151, 2039], Enumerable.Range(0, 8).Select(g => dpe.Distance(g * 8, 131071, 0)));
        Assert.Equal(1023f, dpe.Distance(5, 131071, 131071 - 1023));
    }

    public static TheoryData<string, int, int, int, int, int> Cases => new()
    {
        // spec, heads, kv heads, head dim, rotary dim, tokens
        { "selfextend:g=3,w=5", 4, 2, 16, 16, 70 },
        { "selfextend:g=4,w=8", 2, 2, 8, 8, 300 },
        { "dpe:w=6,g=2,5", 4, 1, 16, 16, 90 },
        { "dpe:w=4,g=1,3,8,64", 2, 1, 32, 16, 80 },
        { "rerope:w=6", 2, 1, 16, 16, 60 },
        { "leaky-rerope:w=4,k=2.5", 3, 1, 8, 8, 60 },
    };

    // Rope + Attention of the CPU backend (prefill in chunks of 32, then decode), f32 cache, against the reference.
    [Theory]
    [MemberData(nameof(Cases))]
    public void AttentionMatchesDirectComputation(string spec, int heads, int kvHeads, int hd, int rotary, int tokens)
    {
        var table = Table(spec, rotary, trained: 16, tokens);
        Check(table, heads, kvHeads, hd, tokens, prefill: tokens - 12, chunk: 32, seed: spec.Length + tokens);
    }

    // One long prefill at T = 4096 (single call, several threads), Self-Extend and DPE.
    [Theory]
    [InlineData("selfextend:g=8,w=128")]
    [InlineData("dpe:w=128,g=2,16,64,256")]
    public void LongPrefillMatchesDirectComputation(string spec)
    {
        var table = Table(spec, 16, trained: 512, 4096);
        Check(table, 2, 1, 16, 4096, prefill: 4096, chunk: 4096, seed: 7, sampledQueries: 48);
    }

    // DPE's key dims: a different set of pairs takes the grouped positions in each KV head; the rest keep the true
    // distance in the far branch (prefill in chunks, then decode).
    [Theory]
    [InlineData("dpe:w=6,g=2,5", 4, 2, 90)]
    [InlineData("selfextend:g=4,w=8", 2, 2, 300)]
    public void KeyDimsMatchDirectComputation(string spec, int heads, int kvHeads, int tokens)
    {
        var table = Table(spec, 16, trained: 16, tokens);
        var rng = new Random(11);
        var selected = Enumerable.Range(0, kvHeads * 8).Select(_ => rng.Next(3) > 0).ToArray();
        table = table with { Remap = table.Remap!.WithKeyDims(new RopeKeyDims(1, kvHeads, 8, selected)) };
        Check(table, heads, kvHeads, 16, tokens, prefill: tokens - 12, chunk: 32, seed: 5);
    }

    // Every pair selected is the plain remap; none selected leaves every distance true, so attention is plain RoPE's.
    [Fact]
    public void KeyDimsAllOrNoneAreTheRemapOrPlainRope()
    {
        var dpe = Table("dpe:w=6,g=2,5", 16, trained: 16, 90);
        var all = dpe with { Remap = dpe.Remap!.WithKeyDims(new RopeKeyDims(1, 2, 8, Enumerable.Repeat(true, 16).ToArray())) };
        var none = dpe with { Remap = dpe.Remap!.WithKeyDims(new RopeKeyDims(1, 2, 8, new bool[16])) };
        var plain = dpe with { Remap = null };
        Assert.Equal(Attention(dpe), Attention(all));
        var a = Attention(none);
        var b = Attention(plain);
        Assert.True(a.Zip(b).Max(p => Math.Abs(p.First - p.Second)) < 1e-5);
        Assert.NotEqual(Attention(dpe), a);
        Assert.Throws<ArgumentException>(() => dpe.Remap!.WithKeyDims(new RopeKeyDims(1, 2, 4, new bool[8])));
    }

    // The score of a pair is the mean over tokens (and the KV head's query heads) of |q_j| |k_j|; Top keeps the largest.
    [Fact]
    public void KeyDimScoresAreMeanNormProducts()
    {
        // 2 query heads over 1 KV head, head dim 4 (pairs (0,2) and (1,3)), one token.
        var scores = new KeyDimScores(layers: 1, heads: 2, kvHeads: 1, headDim: 4, rotaryDim: 4);
        float[] q = [3, 0, 4, 1, /* head 1 */ 0, 2, 0, 0];
        float[] k = [1, 1, 0, 1];
        scores.Add(0, q, k, 1);
        // pair 0: |q| = 5 and 0, |k| = 1; pair 1: |q| = 1 and 2, |k| = sqrt 2.
        Assert.Equal(2.5, scores.Score(0, 0, 0), 12);
        Assert.Equal(1.5 * Math.Sqrt(2), scores.Score(0, 0, 1), 12);
        Assert.Equal([true, false], scores.Top(1).Selected);
        Assert.Throws<ArgumentException>(() => scores.Top(3));
    }

    // The model hands its q and k to the scores after the projections and before the rotation: layer 0's scores equal
    // those of q = norm(embedding) Wq and k = norm(embedding) Wk computed by hand.
    [Fact]
    public void KeyDimScoresSeeUnrotatedProjections()
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var backend = new CpuBackend(DType.F32);
        using var weights = LlamaWeights.Load(dir, config, backend);
        int[] ids = [1, 45, 300, 7, 99, 1000];
        using var model = Llama.Create(config, weights, backend, 64, RopeMethods.FromConfig(config));
        var scores = KeyDimSelection.Score(model, [ids]);

        int n = ids.Length;
        using var x = backend.Alloc(DType.F32, n, config.HiddenSize);
        using var xb = backend.Alloc(DType.F32, n, config.HiddenSize);
        using var q = backend.Alloc(DType.F32, n, config.QDim);
        using var k = backend.Alloc(DType.F32, n, config.KvDim);
        backend.Embedding(ids, weights.EmbedTokens, x);
        backend.RmsNorm(x, weights.Layers[0].InputLayernorm, xb, config.RmsNormEps);
        backend.MatMul(xb, weights.Layers[0].QProj, q);
        backend.MatMul(xb, weights.Layers[0].KProj, k);
        var direct = new KeyDimScores(config.NumHiddenLayers, config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim, config.RotaryDim);
        var qh = new float[q.Length];
        var kh = new float[k.Length];
        backend.Download(q, qh);
        backend.Download(k, kh);
        direct.Add(0, qh, kh, n);
        for (int h = 0; h < config.NumKeyValueHeads; h++)
            for (int j = 0; j < direct.Pairs; j++)
                Assert.Equal(direct.Score(0, h, j), scores.Score(0, h, j), 9);
        Assert.True(scores.Score(config.NumHiddenLayers - 1, 0, 0) > 0);
        var top = scores.Top(direct.Pairs / 2);
        Assert.Equal(config.NumHiddenLayers * config.NumKeyValueHeads * direct.Pairs / 2, top.Selected.Count(s => s));
    }

    // Rope then attention over 90 tokens in one prefill, 4 heads over 2 KV heads of 16 dims, on the CPU backend.
    private static float[] Attention(RopeTable table)
    {
        const int tokens = 90, heads = 4, kvHeads = 2, hd = 16;
        var rng = new Random(2);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        using var b = new CpuBackend(DType.F32);
        using var kv = b.AllocKvCache(1, tokens, kvHeads, hd, farKeys: table.Remap is not null);
        using var q = Upload(b, Rand(tokens * heads * hd), 0, tokens, heads * hd);
        using var k = Upload(b, Rand(tokens * kvHeads * hd), 0, tokens, kvHeads * hd);
        using var v = Upload(b, Rand(tokens * kvHeads * hd), 0, tokens, kvHeads * hd);
        using var qFar = b.Alloc(DType.F32, tokens, heads * hd);
        using var dst = b.Alloc(DType.F32, tokens, heads * hd);
        b.Rope(q, k, v, kv, 0, 0, table, DType.F32, table.Remap is null ? null : qFar);
        b.Attention(q, kv, 0, 0, dst, DType.F32, table.Remap is { } r ? new FarQueries(qFar, r.Window) : null);
        var got = new float[tokens * heads * hd];
        b.Download(dst, got);
        return got;
    }

    private static RopeTable Table(string spec, int rotary, int trained, int target)
    {
        var config = new LlamaConfig
        {
            HiddenSize = 64, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 4, NumKeyValueHeads = 4,
            HeadDim = rotary, VocabSize = 16, RmsNormEps = 1e-5f, MaxPositionEmbeddings = trained, TieWordEmbeddings = false,
            Rope = new RopeParameters { Theta = 10000 },
        };
        return RopeMethods.Parse(spec, config, target).Base;
    }

    // The bf16 cache (the CPU default) rounds both kinds of keys and the values: the same check, looser.
    [Fact]
    public void Bf16CacheMatchesDirectComputation() =>
        Check(Table("selfextend:g=3,w=5", 16, 16, 70), 4, 2, 16, 70, prefill: 58, chunk: 32, seed: 3, cache: DType.BF16, tolerance: 3e-2);

    private static void Check(RopeTable table, int heads, int kvHeads, int hd, int tokens, int prefill, int chunk, int seed, int sampledQueries = 0,
        DType cache = DType.F32, double tolerance = 1e-4)
    {
        var remap = table.Remap!;
        int qDim = heads * hd, kvDim = kvHeads * hd, group = heads / kvHeads;
        var rng = new Random(seed);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        float[] q0 = Rand(tokens * qDim), k0 = Rand(tokens * kvDim), v0 = Rand(tokens * kvDim);
        var got = new float[tokens * qDim];

        using var b = new CpuBackend(cache);
        using var kv = b.AllocKvCache(1, tokens, kvHeads, hd, farKeys: true);
        for (int start = 0; start < tokens;)
        {
            int n = start < prefill ? Math.Min(chunk, prefill - start) : 1;
            using var q = Upload(b, q0, start, n, qDim);
            using var k = Upload(b, k0, start, n, kvDim);
            using var v = Upload(b, v0, start, n, kvDim);
            using var qFar = b.Alloc(DType.F32, n, qDim);
            using var dst = b.Alloc(DType.F32, n, qDim);
            b.Rope(q, k, v, kv, 0, start, table, DType.F32, qFar);
            b.Attention(q, kv, 0, start, dst, DType.F32, new FarQueries(qFar, remap.Window));
            b.Download(dst, got.AsSpan(start * qDim, n * qDim));
            start += n;
        }

        // Reference: each pair of q and k rotated in double by the cos/sin of its f32 angle at the position the branch
        // gives it (true positions near, grouped positions far), the query scale, one softmax in double.
        int half = table.InvFreq.Length;
        double[] Rotated(float[] x, int t, int dim, int h, Func<int, float> position)
        {
            var r = new double[hd];
            for (int i = 0; i < hd; i++) r[i] = x[t * dim + h * hd + i];
            for (int j = 0; j < half; j++)
            {
                double a = DeviceRope.Angle(position(j), table.InvFreq[j]), c = Math.Cos(a) * table.Magnitude, s = Math.Sin(a) * table.Magnitude;
                double x0 = r[j], x1 = r[j + half];
                (r[j], r[j + half]) = (x0 * c - x1 * s, x1 * c + x0 * s);
            }
            return r;
        }
        var kNear = new double[tokens, kvHeads][];
        var kFar = new double[tokens, kvHeads][];
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < kvHeads; h++)
            {
                kNear[t, h] = Rotated(k0, t, kvDim, h, _ => t);
                kFar[t, h] = Rotated(k0, t, kvDim, h, j => DeviceRope.GroupedKey(t, remap.GroupAt(0, h, j), remap.Floor ? 1 : 0));
            }
        var queries = sampledQueries == 0 ? Enumerable.Range(0, tokens)
            : Enumerable.Range(0, sampledQueries).Select(i => (int)((long)i * (tokens - 1) / (sampledQueries - 1)));
        double worst = 0;
        foreach (int t in queries)
            for (int h = 0; h < heads; h++)
            {
                double scale = table.QueryScale?.At(0, t) ?? 1;
                var qn = Rotated(q0, t, qDim, h, _ => t);
                var qf = Rotated(q0, t, qDim, h, j => DeviceRope.GroupedQuery(t, remap.GroupAt(0, h / group, j), remap.Window, remap.Floor ? 1 : 0));
                var scores = new double[t + 1];
                for (int s = 0; s <= t; s++)
                {
                    bool far = remap.IsFar(t, s);
                    double[] qq = far ? qf : qn, kk = far ? kFar[s, h / group] : kNear[s, h / group];
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += qq[i] * kk[i];
                    scores[s] = dot * scale / Math.Sqrt(hd);
                }
                double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
                for (int i = 0; i < hd; i++)
                {
                    double e = 0;
                    for (int s = 0; s <= t; s++) e += Math.Exp(scores[s] - max) / sum * v0[s * kvDim + (h / group) * hd + i];
                    worst = Math.Max(worst, Math.Abs(e - got[t * qDim + h * hd + i]));
                }
            }
        Assert.True(worst <= tolerance, $"{table.Describe()}, {cache} cache: max |attention - direct| {worst:E2} at T={tokens}");
    }

    private static Tensor Upload(CpuBackend b, float[] src, int row, int rows, int cols)
    {
        var t = b.Alloc(DType.F32, rows, cols);
        src.AsSpan(row * cols, rows * cols).CopyTo(new Span<float>((void*)t.Pointer, rows * cols));
        return t;
    }

    // The austen model with Self-Extend: logits of a prefill in chunks and of decoding token by token agree (the grouped
    // keys in the cache serve later queries), and within the window the model's logits are plain RoPE's exactly.
    [Fact]
    public void ModelPrefillEqualsDecodeAndWindowIsPlain()
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        using var backend = new CpuBackend(DType.F32);
        using var weights = LlamaWeights.Load(dir, config, backend);
        int n = 160, vocab = config.VocabSize;
        int[] ids = [.. Enumerable.Range(0, n).Select(i => (i * 7919 + 5) % vocab)];
        float[] Logits(string spec, int chunk, bool decodeTail)
        {
            var rope = RopeMethods.Parse(spec, config, 2048);
            using var model = Llama.Create(config, weights, backend, n, rope, maxBatch: chunk);
            var logits = new float[n * vocab];
            int prefill = decodeTail ? n - 40 : n;
            model.Forward(ids.AsSpan(0, prefill), 0, LogitsRows.All, logits);
            for (int t = prefill; t < n; t++) model.Forward(ids.AsSpan(t, 1), t, LogitsRows.All, logits.AsSpan(t * vocab, vocab));
            return logits;
        }
        var whole = Logits("selfextend:g=4,w=32", 512, decodeTail: false);
        var pieces = Logits("selfextend:g=4,w=32", 48, decodeTail: true);
        Assert.True(whole.Zip(pieces).Max(p => Math.Abs(p.First - p.Second)) < 1e-4, "chunked prefill and decode differ from one prefill");
        Assert.Equal(Logits("none", 512, false), Logits($"selfextend:g=4,w={n}", 512, false));
        Assert.NotEqual(Logits("none", 512, false), whole);
    }

    // The default past the trained length on the passkey model (trained at 256) retrieves at 4x, where plain RoPE cannot.
    [Fact]
    public void DefaultRetrievesThePasskeyAt4x()
    {
        if (SharedData.Path("models/austen-passkey") is not { } dir) return;
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        var tokenizer = LlamaRun.Text.Tokenizer.FromModelDirectory(dir);
        using var backend = new CpuBackend();
        using var weights = LlamaWeights.Load(dir, config, backend);
        double[] depths = [0, 0.5, 1];
        int Correct(RopeSchedule rope)
        {
            using var model = Llama.Create(config, weights, backend, 1024, rope);
            return LlamaRun.Text.PasskeyTest.Evaluate(model, tokenizer, 1024, 2, 1, depths).Correct.Sum();
        }
        var defaultRope = RopeMethods.Default(config, 1024);
        Assert.Equal("leaky-rerope", defaultRope.Base.Method);
        Assert.True(Correct(defaultRope) >= 5, "the default finds fewer than 5 of 6 keys at 1024");
        Assert.True(Correct(RopeMethods.Parse("none", config, 1024)) <= 2, "plain RoPE should lose the key at 4x");
    }

    [Fact]
    public void SpecsParse()
    {
        var dpe = Table("dpe:w=128,g=2,8,16,32", 64, 4096, 32768);
        Assert.Equal(128, dpe.Remap!.Window);
        Assert.Equal([2f, 2, 2, 2, 2, 2, 2, 2, 8], dpe.Remap.Group[..9]);
        Assert.Equal(32f, dpe.Remap.Group[^1]);
        var se = Table("selfextend", 128, 4096, 16384);   // defaults: W = 1024, G = ceil(15360 / 1024) = 15
        Assert.Equal((1024, 15f), (se.Remap!.Window, se.Remap.Group[0]));
        Assert.Contains("selfextend window 1024, group 15", se.Describe());
        Assert.True(float.IsPositiveInfinity(Table("rerope", 128, 4096, 16384).Remap!.Group[0]));
        Assert.NotNull(Table("rerope", 128, 4096, 16384).QueryScale);
        Assert.Null(Table("rerope:logn=0", 128, 4096, 16384).QueryScale);
        Assert.Contains("do not split", Assert.Throws<ArgumentException>(() => Table("dpe:g=2,4,8", 128, 4096, 16384)).Message);
        Assert.Contains("whole number", Assert.Throws<ArgumentException>(() => Table("dpe:g=2.5,4", 128, 4096, 16384)).Message);
        Assert.Contains("at least 1", Assert.Throws<ArgumentException>(() => Table("selfextend:w=0", 128, 4096, 16384)).Message);
        Assert.Contains("not a number", Assert.Throws<ArgumentException>(() => Table("yarn:factor=4,8", 128, 4096, 16384)).Message);
    }

    [Fact]
    public void SpecListsSplitBetweenMethods()
    {
        Assert.Equal(["yarn", "selfextend:g=8,w=64", "dpe:w=64,g=2,8,16", "table:/tmp/t.json", "none"],
            RopeMethods.SplitSpecs("yarn, selfextend:g=8,w=64,dpe:w=64,g=2,8,16,table:/tmp/t.json,none"));
    }

    [Fact]
    public void TableFilesKeepTheRemap()
    {
        string path = Path.Combine(Path.GetTempPath(), $"remap-{Environment.ProcessId}.json");
        try
        {
            foreach (var spec in new[] { "dpe:w=64,g=2,4,8,16", "rerope:w=32", "leaky-rerope:w=32,k=3" })
            {
                var t = Table(spec, 64, 1024, 8192);
                RopeTableFile.Save(t, path);
                var back = RopeTableFile.Load(path);
                Assert.True(t.Remap!.SameAs(back.Remap), spec);
                Assert.Equal(t.Remap.Kind, back.Remap!.Kind);
                Assert.Equal(t.QueryScale, back.QueryScale);
            }
            File.WriteAllText(path, File.ReadAllText(path).Replace("\"window\": 32", "\"window\": 0"));
            Assert.Contains("window must be at least 1", Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path)).Message);

            // Key dims: kept per layer and KV head; a list of the wrong count, or a pair out of range, is refused.
            var dpe = Table("dpe:w=64,g=2,4,8,16", 64, 1024, 8192);
            var selected = Enumerable.Range(0, 2 * 3 * 32).Select(i => i % 32 % 3 != 1).ToArray();
            dpe = dpe with { Remap = dpe.Remap!.WithKeyDims(new RopeKeyDims(2, 3, 32, selected)) };
            RopeTableFile.Save(dpe, path);
            var loaded = RopeTableFile.Load(path).Remap!;
            Assert.True(dpe.Remap.SameAs(loaded));
            Assert.Equal(selected, loaded.KeyDims!.Selected);
            Assert.Contains("21 of 32 pairs a KV head", loaded.Describe());
            string json = File.ReadAllText(path);
            File.WriteAllText(path, json.Replace("\"kv_heads\": 3", "\"kv_heads\": 4"));
            Assert.Contains("4 KV heads need 8", Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path)).Message);
            File.WriteAllText(path, json.Replace("\"selected\": [\n        [\n          0,", "\"selected\": [\n        [\n          40,"));
            Assert.Contains("not a pair index below 32", Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path)).Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void RemapNeedsItsBuffers()
    {
        var table = Table("selfextend:g=2,w=4", 8, 16, 64);
        using var b = new CpuBackend(DType.F32);
        using var plain = b.AllocKvCache(1, 8, 1, 8);
        using var q = b.Alloc(DType.F32, 1, 8);
        using var k = b.Alloc(DType.F32, 1, 8);
        using var v = b.Alloc(DType.F32, 1, 8);
        Assert.Contains("qFar", Assert.Throws<ArgumentException>(() => b.Rope(q, k, v, plain, 0, 0, table)).Message);
        using var qFar = b.Alloc(DType.F32, 1, 8);
        Assert.Contains("grouped keys", Assert.Throws<ArgumentException>(() => b.Rope(q, k, v, plain, 0, 0, table, DType.F32, qFar)).Message);
    }
}

// The CPU KV cache in F32 and BF16: Rope's rounded stores, attention over either cache type against a scalar double
// loop at every head dim 1..256 and every decode length 1..600 (tiles, row blocks, merged decode blocks), the bf16
// store at lengths 0..256 with ties and specials, re-rotation of a bf16 cache, how the cache type is chosen, and
// austen's perplexity with each cache.
// Run: dotnet test tests/Tests.csproj --filter CpuKvCacheTests
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;
using Xunit.Abstractions;
using static LlamaRun.Tests.CpuOpsTests;

namespace LlamaRun.Tests;

public unsafe class CpuKvCacheTests(ITestOutputHelper output)
{
    // A [rows, cols] cache of the given type holding the values of `values` (rounded to bf16 for BF16).
    private sealed class Cache(DType type, float[] values)
    {
        public readonly DType Type = type;
        public readonly float[] F32 = type == DType.F32 ? values : [];
        public readonly ushort[] Bf16 = type == DType.BF16 ? values.Select(DTypes.F32ToBF16).ToArray() : [];
        public float this[int i] => Type == DType.F32 ? F32[i] : DTypes.BF16ToF32(Bf16[i]);
    }

    // Attention over a cache of the given type against softmax(q.K^T/sqrt(hd)).V in double over the values the cache holds.
    internal static void CheckAttention(DType type, int heads, int kvHeads, int hd, int startPos, int tokens, int seed)
    {
        int qDim = heads * hd, kvDim = kvHeads * hd, maxSeq = startPos + tokens, group = heads / kvHeads;
        var q = Uniform(tokens * qDim, seed, -2, 2);
        var k = new Cache(type, Uniform(maxSeq * kvDim, seed + 1, -2, 2));
        var v = new Cache(type, Uniform(maxSeq * kvDim, seed + 2));
        var dst = new float[tokens * qDim + 1];
        dst[^1] = 42f;
        var p = new AttentionParams(tokens, heads, kvHeads, hd, startPos, type);
        fixed (float* qp = q, kf = k.F32, vf = v.F32, dp = dst)
        fixed (ushort* kb = k.Bf16, vb = v.Bf16)
            CpuOps.Attention(qp, type == DType.F32 ? kf : kb, type == DType.F32 ? vf : vb, dp, p);
        string what = $"Attention {type} {heads}/{kvHeads} hd={hd} start={startPos} T={tokens}";
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int len = startPos + t + 1, kvh = h / group;
                var scores = new double[len];
                for (int s = 0; s < len; s++)
                {
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += (double)q[t * qDim + h * hd + i] * k[s * kvDim + kvh * hd + i];
                    scores[s] = dot / Math.Sqrt(hd);
                }
                double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
                for (int i = 0; i < hd; i++)
                {
                    double e = 0;
                    for (int s = 0; s < len; s++) e += Math.Exp(scores[s] - max) / sum * v[s * kvDim + kvh * hd + i];
                    Close(e, dst[t * qDim + h * hd + i], 2e-6 * Math.Sqrt(len + hd), $"{what} [{t},{h},{i}]");
                }
            }
        Assert.Equal(42f, dst[^1]);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void AttentionEveryHeadDim(DType type)
    {
        for (int hd = 1; hd <= 256; hd++)
        {
            CheckAttention(type, 2, 2, hd, 8 + hd % 23, 1, hd);          // decode
            CheckAttention(type, 4, 1, hd, hd % 11, 3, hd + 1000);         // prefill, one kv head for four queries
        }
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void AttentionEveryDecodeLength(DType type)
    {
        for (int len = 1; len <= 600; len++) CheckAttention(type, 3, 3, 16, len - 1, 1, len);
        foreach (int len in new[] { 1, 255, 256, 257, 1100 }) CheckAttention(type, 8, 2, 64, len - 1, 1, len);   // groups of four
    }

    public static IEnumerable<object[]> PrefillCases =>
        from type in new[] { DType.F32, DType.BF16 }
        from shape in new[]
        {
            new[] { 12, 12, 64, 0, 130 },   // stories110M: several token tiles and key tiles
            new[] { 8, 2, 128, 300, 40 },   // Llama-3-8B grouping, chunked
            new[] { 6, 3, 20, 63, 9 },      // groups of two, a head dim off the vector width
            new[] { 16, 1, 64, 200, 3 },    // group of 16: one query tile of 2 tokens and one of 1
        }
        select new object[] { type, shape[0], shape[1], shape[2], shape[3], shape[4] };

    [Theory]
    [MemberData(nameof(PrefillCases))]
    public void AttentionPrefill(DType type, int heads, int kvHeads, int hd, int startPos, int tokens) =>
        CheckAttention(type, heads, kvHeads, hd, startPos, tokens, heads * 7 + tokens);

    [Theory]
    [InlineData(1, 300)]   // decode: blocks of rows merged
    [InlineData(5, 100)]   // prefill tiles
    public void AttentionNaNStaysInItsHead(int tokens, int startPos)
    {
        const int heads = 4, kvHeads = 2, hd = 32, kvDim = kvHeads * hd;
        int maxSeq = startPos + tokens;
        var q = Uniform(tokens * heads * hd, 1);
        var k = Uniform(maxSeq * kvDim, 2).Select(DTypes.F32ToBF16).ToArray();
        var v = Uniform(maxSeq * kvDim, 3).Select(DTypes.F32ToBF16).ToArray();
        q[(tokens - 1) * heads * hd + 2 * hd + 5] = float.NaN;   // last token, head 2
        var dst = new float[tokens * heads * hd];
        fixed (float* qp = q, dp = dst)
        fixed (ushort* kp = k, vp = v)
            CpuOps.Attention(qp, kp, vp, dp, new AttentionParams(tokens, heads, kvHeads, hd, startPos, DType.BF16));
        for (int i = 0; i < dst.Length; i++)
        {
            bool poisoned = i / (heads * hd) == tokens - 1 && i / hd % heads == 2;
            Assert.True(poisoned == float.IsNaN(dst[i]), $"T={tokens} element {i}: {dst[i]}");
        }
    }

    [Fact]
    public void Bf16StoreMatchesScalarAtEveryLength()
    {
        float[] specials = [0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, -float.NaN,
            BitConverter.UInt32BitsToSingle(0x7f800001), BitConverter.UInt32BitsToSingle(0x3f808000),   // signalling NaN, a tie
            BitConverter.UInt32BitsToSingle(0x3f818000), BitConverter.UInt32BitsToSingle(0x7f7fffff), 1e-40f, float.MaxValue];
        for (int n = 0; n <= 256; n++)
        {
            var x = Uniform(n, n, -100, 100);
            for (int i = 0; i < n; i += 5) x[i] = specials[i / 5 % specials.Length];
            var dst = new ushort[n + 1];
            dst[^1] = 0xabcd;
            fixed (float* xp = x)
            fixed (ushort* dp = dst)
                CpuOps.ConvertToBf16(xp, dp, n);
            for (int i = 0; i < n; i++) Assert.True(DTypes.F32ToBF16(x[i]) == dst[i], $"n={n} [{i}] {x[i]:R}: expected 0x{DTypes.F32ToBF16(x[i]):x4}, got 0x{dst[i]:x4}");
            Assert.Equal(0xabcd, dst[^1]);
        }
    }

    [Fact]
    public void RopeStoresRoundedKeysAndValues()
    {
        const int heads = 4, kvHeads = 2, hd = 64, startPos = 5, tokens = 70, kvDim = kvHeads * hd, maxSeq = startPos + tokens + 1;
        var table = CpuOpsAttentionTests.Table(hd, 10000, 1.1f);
        var q = Uniform(tokens * heads * hd, 1);
        var k = Uniform(tokens * kvDim, 2, -3, 3);
        var v = Uniform(tokens * kvDim, 3);
        var kc = new ushort[maxSeq * kvDim];
        var vc = new ushort[maxSeq * kvDim];
        fixed (float* qp = q, kp = k, vp = v)
        fixed (ushort* kcp = kc, vcp = vc)
            CpuOps.Rope(qp, kp, vp, kcp, vcp, table, new RopeParams(tokens, heads, kvHeads, hd, startPos, 0, DType.BF16));
        for (int i = 0; i < maxSeq * kvDim; i++)
        {
            int row = i / kvDim, t = row - startPos;
            bool stored = t >= 0 && t < tokens;
            Assert.Equal(stored ? DTypes.F32ToBF16(k[t * kvDim + i % kvDim]) : (ushort)0, kc[i]);   // k is rotated in place
            Assert.Equal(stored ? DTypes.F32ToBF16(v[t * kvDim + i % kvDim]) : (ushort)0, vc[i]);
        }
    }

    [Fact]
    public void RerotateBf16CacheStaysWithinOneRounding()
    {
        const int layers = 2, kvHeads = 2, hd = 64, maxSeq = 300, length = 260, kvDim = kvHeads * hd;
        var a = CpuOpsAttentionTests.Table(hd, 10000, 1.1f);
        var b = CpuOpsAttentionTests.Table(hd, 160000, 0.9f);
        var viaA = new ushort[layers * maxSeq * kvDim];
        var direct = new float[layers * maxSeq * kvDim];
        var vc = new ushort[layers * maxSeq * kvDim];
        var vf = new float[layers * maxSeq * kvDim];
        for (int l = 0; l < layers; l++)
        {
            var k = Uniform(length * kvDim, 10 + l, -3, 3);
            var k2 = (float[])k.Clone();
            var q = new float[length * kvDim];
            var v = new float[length * kvDim];
            int o = l * maxSeq * kvDim;
            fixed (float* qp = q, kp = k, k2p = k2, vp = v, dp = direct, vfp = vf)
            fixed (ushort* ap = viaA, vcp = vc)
            {
                CpuOps.Rope(qp, kp, vp, ap + o, vcp + o, a, new RopeParams(length, kvHeads, kvHeads, hd, 0, l, DType.BF16));
                CpuOps.Rope(qp, k2p, vp, dp + o, vfp + o, b, new RopeParams(length, kvHeads, kvHeads, hd, 0, l));
            }
        }
        fixed (ushort* ap = viaA) CpuOps.RerotateCache(ap, layers, maxSeq, length, kvHeads, hd, a, b, DType.BF16);
        for (int i = 0; i < viaA.Length; i++)
        {
            // Two bf16 roundings (the stored key, the re-rotated key) of values whose pair norm is at most ~4.3.
            Close(direct[i], DTypes.BF16ToF32(viaA[i]), 0.035, $"Rerotate bf16 [{i}]");
            if (i % (maxSeq * kvDim) >= length * kvDim) Assert.Equal(0, viaA[i]);
        }
    }

    [Fact]
    public void BackendAllocatesTheCacheTypeItWasGiven()
    {
        using var f32 = new CpuBackend();
        using var bf16 = new CpuBackend(DType.BF16);
        Assert.Equal(4, f32.KvElementSize);
        Assert.Equal(2, bf16.KvElementSize);
        using (var c = f32.AllocKvCache(2, 8, 2, 16)) Assert.Equal(DType.F32, c.K.DType);
        using (var c = bf16.AllocKvCache(2, 8, 2, 16))
        {
            Assert.Equal(DType.BF16, c.K.DType);
            Assert.Equal(DType.BF16, c.V.DType);
        }
        Assert.Throws<ArgumentException>(() => new CpuBackend(DType.F16));
    }

    [Fact]
    public void FactoryPicksBf16UnlessFullPrecisionOrAskedForF32()
    {
        Assert.Equal(DType.BF16, BackendFactory.CpuKvCache(fullPrecision: false, null));
        Assert.Equal(DType.F32, BackendFactory.CpuKvCache(fullPrecision: true, null));
        Assert.Equal(DType.F32, BackendFactory.CpuKvCache(fullPrecision: false, DType.F32));
        Assert.Equal(DType.F32, BackendFactory.CpuKvCache(fullPrecision: true, DType.F32));
        Assert.Throws<ArgumentException>(() => BackendFactory.CpuKvCache(fullPrecision: true, DType.BF16));
        Assert.Throws<ArgumentException>(() => BackendFactory.CpuKvCache(fullPrecision: false, DType.F16));
        using var cpu = BackendFactory.Create("cpu");
        Assert.Equal(2, cpu.KvElementSize);
        using var full = BackendFactory.Create("cpu", fullPrecision: true);
        Assert.Equal(4, full.KvElementSize);
    }

    [SharedFact("models/austen/reference/heldout-ids.txt")]
    public void AustenPerplexityAt512WithEitherCache()
    {
        string dir = LoaderTestSupport.RepoRoot + "/models/austen";
        int[] ids = File.ReadAllText(SharedData.Path("models/austen/reference/heldout-ids.txt")!)
            .Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
        var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
        double Ppl(DType cache)
        {
            using var backend = new CpuBackend(cache);
            using var weights = LlamaWeights.Load(dir, config, backend);
            using var model = Llama.Create(config, weights, backend, 512, RopeMethods.FromConfig(config));
            return Evaluation.Perplexity(model, ids, 512, 16).Ppl;
        }
        double f32 = Ppl(DType.F32), bf16 = Ppl(DType.BF16);
        output.WriteLine($"austen ppl@512, 16 windows: f32 cache {f32:F4}, bf16 cache {bf16:F4} (transformers bf16: 45.4047)");
        Assert.InRange(f32, 45.4256 - 5e-4, 45.4256 + 5e-4);          // the f32 reference figure of the README
        Assert.InRange(bf16, 45.4047 * 0.995, 45.4047 * 1.005);
    }
}

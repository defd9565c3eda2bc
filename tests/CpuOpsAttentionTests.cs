// CPU Rope, Attention (F32 and BF16 caches, through CpuKvCacheTests.CheckAttention) and RerotateCache against
// independent scalar implementations (transformers' formulas).
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~CpuOpsAttentionTests"
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using LlamaRun.Rope;
using Xunit;
using static LlamaRun.Tests.CpuOpsTests;

namespace LlamaRun.Tests;

public unsafe class CpuOpsAttentionTests
{
    internal static RopeTable Table(int rotaryDim, double theta, float magnitude = 1f, QueryScale? qs = null) => new()
    {
        Method = $"theta{theta}",
        InvFreq = Enumerable.Range(0, rotaryDim / 2).Select(j => (float)(1.0 / Math.Pow(theta, 2.0 * j / rotaryDim))).ToArray(),
        Magnitude = magnitude,
        QueryScale = qs,
    };

    // transformers' apply_rotary_pos_emb on one head: x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), f32 throughout.
    private static float[] RotateHf(ReadOnlySpan<float> x, int pos, RopeTable table, float queryScale)
    {
        int rot = table.RotaryDim, half = rot / 2;
        var cos = new float[rot];
        var sin = new float[rot];
        for (int d = 0; d < rot; d++)
        {
            float freq = (float)pos * table.InvFreq[d % half];
            cos[d] = (float)Math.Cos(freq) * table.Magnitude;
            sin[d] = (float)Math.Sin(freq) * table.Magnitude;
        }
        var y = x.ToArray();
        for (int d = 0; d < rot; d++)
        {
            float rotated = d < half ? -x[d + half] : x[d - half];
            y[d] = x[d] * cos[d] + rotated * sin[d];
        }
        for (int d = 0; d < y.Length; d++) y[d] *= queryScale;
        return y;
    }

    public static IEnumerable<object[]> RopeCases =>
    [
        [16, 16, 1f, false, 0, 4, 2],
        [16, 8, 1f, false, 5, 4, 2],     // partial rotary
        [64, 64, 1.3f, false, 3, 8, 8],  // YaRN-style magnitude
        [64, 32, 1.1f, true, 7, 4, 2],   // query scale, skipped and scaled layers
        [20, 12, 0.9f, true, 100, 6, 3],
    ];

    [Theory]
    [MemberData(nameof(RopeCases))]
    public void RopeMatchesTransformersFormula(int headDim, int rotaryDim, float magnitude, bool queryScale, int startPos, int heads, int kvHeads)
    {
        var table = Table(rotaryDim, 10000, magnitude, queryScale ? new QueryScale(8f, 1) : null);
        foreach (int layer in new[] { 0, 2 })
            foreach (int tokens in new[] { 1, 9, 300 }) CheckRope(table, headDim, heads, kvHeads, startPos, tokens, layer);
    }

    [Fact]
    public void RopeAllHeadDims()
    {
        for (int hd = 2; hd <= 256; hd += 2)
        {
            CheckRope(Table(hd, 10000), hd, 2, 1, 3, 2, 0);
            CheckRope(Table(hd / 2 / 2 * 2, 500000, 1.2f), hd, 2, 2, 11, 3, 0);
        }
    }

    private static void CheckRope(RopeTable table, int hd, int heads, int kvHeads, int startPos, int tokens, int layer)
    {
        int qDim = heads * hd, kvDim = kvHeads * hd, maxSeq = startPos + tokens + 2;
        var q = Uniform(tokens * qDim, hd + tokens);
        var k = Uniform(tokens * kvDim, hd + tokens + 1);
        var v = Uniform(tokens * kvDim, hd + tokens + 2);
        var (q0, k0) = ((float[])q.Clone(), (float[])k.Clone());
        var kc = new float[maxSeq * kvDim];
        var vc = new float[maxSeq * kvDim];
        fixed (float* qp = q, kp = k, vp = v, kcp = kc, vcp = vc)
            CpuOps.Rope(qp, kp, vp, kcp, vcp, table, new RopeParams(tokens, heads, kvHeads, hd, startPos, layer));
        string what = $"Rope hd={hd} rot={table.RotaryDim} T={tokens} start={startPos} layer={layer}";
        for (int t = 0; t < tokens; t++)
        {
            int pos = startPos + t;
            float s = table.QueryScale?.At(layer, pos) ?? 1f;
            for (int h = 0; h < heads; h++)
                Assert.True(RotateHf(q0.AsSpan(t * qDim + h * hd, hd), pos, table, s).AsSpan().SequenceEqual(q.AsSpan(t * qDim + h * hd, hd)), $"{what} q[{t},{h}]");
            for (int h = 0; h < kvHeads; h++)
            {
                var e = RotateHf(k0.AsSpan(t * kvDim + h * hd, hd), pos, table, 1f);
                Assert.True(e.AsSpan().SequenceEqual(k.AsSpan(t * kvDim + h * hd, hd)), $"{what} k[{t},{h}]");
                Assert.True(e.AsSpan().SequenceEqual(kc.AsSpan(pos * kvDim + h * hd, hd)), $"{what} cache k[{pos},{h}]");
            }
            Assert.True(v.AsSpan(t * kvDim, kvDim).SequenceEqual(vc.AsSpan(pos * kvDim, kvDim)), $"{what} cache v[{pos}]");
        }
        for (int pos = 0; pos < maxSeq; pos++)
        {
            if (pos >= startPos && pos < startPos + tokens) continue;
            Assert.True(kc.AsSpan(pos * kvDim, kvDim).IndexOfAnyExcept(0f) < 0, $"{what}: cache row {pos} written");
            Assert.True(vc.AsSpan(pos * kvDim, kvDim).IndexOfAnyExcept(0f) < 0, $"{what}: cache row {pos} written");
        }
    }

    public static IEnumerable<object[]> AttentionCases =>
    [
        [4, 2, 16, 0, 1],
        [4, 2, 16, 0, 9],
        [4, 2, 64, 5, 1],
        [4, 2, 64, 5, 9],
        [8, 8, 16, 13, 4],
        [8, 8, 64, 0, 33],
        [8, 8, 20, 3, 5],    // head dim not a multiple of the vector width
        [6, 2, 128, 200, 3], // large enough for the thread pool
        [12, 12, 64, 0, 130],
    ];

    [Theory]
    [MemberData(nameof(AttentionCases))]
    public void AttentionMatchesNaiveDouble(int heads, int kvHeads, int hd, int startPos, int tokens)
    {
        foreach (var cache in new[] { DType.F32, DType.BF16 })
            CpuKvCacheTests.CheckAttention(cache, heads, kvHeads, hd, startPos, tokens, heads + tokens);
    }

    [Theory]
    [InlineData(16, 16, 1f)]
    [InlineData(20, 12, 1.25f)]
    [InlineData(64, 64, 0.8f)]
    public void RerotateEqualsDirectRotation(int hd, int rotaryDim, float magnitudeB)
    {
        const int layers = 2, kvHeads = 2, maxSeq = 600, length = 517;
        int kvDim = kvHeads * hd;
        var a = Table(rotaryDim, 10000, 1.1f);
        var b = Table(rotaryDim, 160000, magnitudeB, new QueryScale(64f, 0));
        var viaA = new float[layers * maxSeq * kvDim];
        var viaB = new float[layers * maxSeq * kvDim];
        var vc = new float[layers * maxSeq * kvDim];
        for (int l = 0; l < layers; l++)
        {
            var k = Uniform(length * kvDim, 100 + l, -3, 3);
            var q = new float[length * kvDim];
            var v = Uniform(length * kvDim, 200 + l);
            var k2 = (float[])k.Clone();
            fixed (float* qp = q, kp = k, k2p = k2, vp = v, ap = viaA, bp = viaB, vcp = vc)
            {
                var p = new RopeParams(length, kvHeads, kvHeads, hd, 0, l);
                CpuOps.Rope(qp, kp, vp, ap + l * maxSeq * kvDim, vcp + l * maxSeq * kvDim, a, p);
                CpuOps.Rope(qp, k2p, vp, bp + l * maxSeq * kvDim, vcp + l * maxSeq * kvDim, b, p);
            }
        }
        fixed (float* ap = viaA) CpuOps.RerotateCache(ap, layers, maxSeq, length, kvHeads, hd, a, b);
        int exact = 0, total = 0;
        for (int row = 0; row < layers * maxSeq; row++)
            for (int h = 0; h < kvHeads; h++)
            {
                int o = row * kvDim + h * hd;
                for (int j = 0; j < rotaryDim / 2; j++)
                {
                    double norm = Math.Sqrt((double)viaB[o + j] * viaB[o + j] + (double)viaB[o + j + rotaryDim / 2] * viaB[o + j + rotaryDim / 2]);
                    foreach (int d in new[] { j, j + rotaryDim / 2 })
                    {
                        Close(viaB[o + d], viaA[o + d], 4e-7 * norm, $"Rerotate row {row} head {h} dim {d}");
                        exact += viaB[o + d] == viaA[o + d] ? 1 : 0;
                        total++;
                    }
                }
                for (int d = rotaryDim; d < hd; d++) Assert.Equal(viaB[o + d], viaA[o + d]);
            }
        Assert.True(exact > total / 2, $"only {exact} of {total} re-rotated values are bit-identical to direct rotation");
    }
}

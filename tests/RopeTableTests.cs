// RoPE table producers against transformers: ROPE.md's HF-verified worked values (d = 128) and, for every rope_type
// of tests/fixtures/hf-tiny, the transformers formulas restated here in float64. Also RopeMethods and RopeTableFile.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~RopeTableTests"
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;

namespace LlamaRun.Tests;

public class RopeTableTests
{
    private const double Rel = 1e-6;

    internal static void Close(double expected, double actual, double rel = Rel, string what = "")
    {
        double tol = rel * Math.Max(Math.Abs(expected), 1e-30);
        Assert.True(Math.Abs(expected - actual) <= tol, $"{what} expected {expected:R}, got {actual:R} (rel {Math.Abs(expected - actual) / Math.Abs(expected):E2})");
    }

    private static void Close(double[] expected, float[] actual, double rel = Rel)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int j = 0; j < expected.Length; j++) Close(expected[j], actual[j], rel, $"pair {j}:");
    }

    // transformers' formulas in float64 (modeling_rope_utils), restated independently of the engine.
    private static double[] Plain(int d, double b) => [.. Enumerable.Range(0, d / 2).Select(j => 1.0 / Math.Pow(b, 2.0 * j / d))];

    private static double[] Yarn(int d, double b, double s, int orig, double betaFast = 32, double betaSlow = 1)
    {
        double Corr(double rot) => d * Math.Log(orig / (rot * 2 * Math.PI)) / (2 * Math.Log(b));
        double low = Math.Max(Math.Floor(Corr(betaFast)), 0), high = Math.Min(Math.Ceiling(Corr(betaSlow)), d - 1);
        if (low == high) high += 0.001;
        return [.. Plain(d, b).Select((w, j) => { double e = 1 - Math.Clamp((j - low) / (high - low), 0, 1); return w / s * (1 - e) + w * e; })];
    }

    private static double[] Llama3(int d, double b, double s, double lo, double hi, int orig) =>
        [.. Plain(d, b).Select(w =>
        {
            double wl = 2 * Math.PI / w;
            if (wl < orig / hi) return w;
            if (wl > orig / lo) return w / s;
            double sm = (orig / wl - lo) / (hi - lo);
            return (1 - sm) * w / s + sm * w;
        })];

    internal static LlamaConfig Tiny(RopeParameters rope, int maxPos = 64, int headDim = 16) => new()
    {
        HiddenSize = 64, IntermediateSize = 160, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = headDim,
        VocabSize = 256, RmsNormEps = 1e-5f, MaxPositionEmbeddings = maxPos, TieWordEmbeddings = false, Rope = rope,
    };

    [Fact]
    public void WorkedValuesD128()
    {
        var plain = PlainRope.Default(128, 10000).InvFreq;
        Close(1.0, plain[0]); Close(0.8659643234, plain[1]); Close(1.154781985e-4, plain[63]);
        Close(2.886954962e-5, PlainRope.Linear(128, 10000, 4).InvFreq[63]);
        Close(40889.94243248622, BaseChangeRope.NtkBase(128, 10000, 4), 1e-12);
        Close(2.886954962e-5, BaseChangeRope.Ntk(128, 10000, 4).InvFreq[63]);
        Close(51293.78727, BaseChangeRope.DynamicBase(128, 10000, 4, 4096, 8192), 1e-9);
        Close(135401.97304, BaseChangeRope.DynamicBase(128, 10000, 4, 4096, 16384), 1e-9);
        Close(10000, BaseChangeRope.DynamicBase(128, 10000, 4, 4096, 4096), 1e-12);
        var dyn = BaseChangeRope.DynamicNtk(128, 10000, 4, 4096);
        Assert.Same(dyn.Base, dyn.For(4096));
        Close(0.8314159647, dyn.For(16384).InvFreq[1]); Close(8.882938344e-6, dyn.For(16384).InvFreq[63]);
        Close(2.455140791e-6, BaseChangeRope.EntropyAbf(128, 10000, 4096).InvFreq[63]);
    }

    [Fact]
    public void YarnWorkedValues()
    {
        var o = new YarnOptions(4, 4096);
        Assert.Equal((20.0, 46.0), YarnRope.CorrectionRange(128, 10000, o));
        var t = YarnRope.Build(128, 10000, o);
        (int j, double w)[] table = [(0, 1), (20, 5.623413252e-2), (21, 4.729203850e-2), (22, 3.973678590e-2), (25, 2.343455264e-2),
            (30, 9.488517883e-3), (33, 5.412277021e-3), (40, 1.337886702e-3), (45, 4.294025890e-4), (46, 3.333803580e-4), (63, 2.886954962e-5)];
        foreach (var (j, w) in table) Close(w, t.InvFreq[j], Rel, $"pair {j}");
        Close(1.1386294361, t.Magnitude);
        Close(1.0693147181, YarnRope.Build(128, 10000, new YarnOptions(2, 4096)).Magnitude);
        var (lo, hi) = YarnRope.CorrectionRange(128, 10000, o with { Truncate = false });
        Close(20.944482, lo, 1e-7); Close(45.026881, hi, 1e-7);
        Close(Yarn(128, 10000, 4, 4096)[30], t.InvFreq[30]);
        // HF returns the mscale ratio: equal mscale and mscale_all_dim give 1 even at factor 40.
        Assert.Equal(1.0, YarnRope.AttentionFactor(new YarnOptions(40, 4096, Mscale: 1, MscaleAllDim: 1)));
        Assert.Equal(0.5, YarnRope.AttentionFactor(new YarnOptions(4, 4096, AttentionFactor: 0.5)));
    }

    [Fact]
    public void Llama3AndLongRopeWorkedValues()
    {
        var t = Llama3Rope.Build(128, 500000, new Llama3Options(8, 1, 4, 8192));
        (int j, double w)[] table = [(28, 3.211445995e-3), (29, 2.166570764e-3), (30, 1.371893568e-3), (31, 8.567514129e-4),
            (32, 5.248461610e-4), (33, 3.126937504e-4), (34, 1.785078128e-4), (35, 9.556212354e-5), (63, 3.068925989e-7)];
        foreach (var (j, w) in table) Close(w, t.InvFreq[j], Rel, $"pair {j}");
        Assert.Equal(35, t.InterpolatedPairs);
        Close(1.1902380714, LongRope.AttentionFactor(131072 / 4096.0, 4096), 1e-9);
        Close(1.0801234497, LongRope.AttentionFactor(16384 / 4096.0, 4096), 1e-9);
        var synth = Enumerable.Range(0, 64).Select(j => 1f + 0.5f * j).ToArray();
        var lr = LongRope.Build(128, 10000, synth, 1f, 32);
        var plain = Plain(128, 10000);
        for (int j = 0; j < 64; j++) Close(plain[j] / (1 + 0.5 * j), lr.InvFreq[j]);
    }

    [Fact]
    public void EntropyAbfQueryScale()
    {
        var q = BaseChangeRope.EntropyAbf(128, 10000, 4096).QueryScale!;
        Assert.Equal(1f, q.At(5, 4095));
        Close(1.0000293, q.At(5, 4096), 1e-6);
        Close(13.0 / 12, q.At(5, 8191), 1e-6);
        Close(14.0 / 12, q.At(5, 16383), 1e-6);
        Assert.Equal(1f, q.At(1, 16383));
    }

    public static TheoryData<string> FixtureTypes => new() { "default", "linear", "dynamic", "yarn", "yarn-b", "llama3", "longrope" };

    // The hf-tiny fixtures (tests/fixtures/hf-tiny/*/config.json): head_dim 16, theta 1e4, max positions 64, 200 tokens.
    private static (RopeParameters Rope, double[] Expected, double Magnitude) Fixture(string name)
    {
        float[] shortF = [1.0f, 1.1f, 1.2f, 1.3f, 1.4f, 1.5f, 1.6f, 1.7f], longF = [1.0f, 1.5f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 4.5f];
        return name switch
        {
            "default" => (new RopeParameters(), Plain(16, 1e4), 1),
            "linear" => (new RopeParameters { Type = RopeType.Linear, Factor = 4 }, [.. Plain(16, 1e4).Select(w => w / 4)], 1),
            // dynamic at 200 tokens: base' = b * (4 * 200 / 64 - 3)^(16/14)
            "dynamic" => (new RopeParameters { Type = RopeType.Dynamic, Factor = 4 }, Plain(16, 1e4 * Math.Pow(4.0 * 200 / 64 - 3, 16.0 / 14)), 1),
            "yarn" => (new RopeParameters { Type = RopeType.Yarn, Factor = 4, OriginalMaxPositionEmbeddings = 64 }, Yarn(16, 1e4, 4, 64), 0.1 * Math.Log(4) + 1),
            "yarn-b" => (new RopeParameters { Type = RopeType.Yarn, Factor = 8, OriginalMaxPositionEmbeddings = 64, BetaFast = 16, BetaSlow = 2 },
                Yarn(16, 1e4, 8, 64, 16, 2), 0.1 * Math.Log(8) + 1),
            "llama3" => (new RopeParameters { Type = RopeType.Llama3, Factor = 4, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 },
                Llama3(16, 1e4, 4, 1, 4, 64), 1),
            // 200 > original 64 -> long factors; factor = max/original = 1 -> attention factor 1 (original == max in the fixture).
            "longrope" => (new RopeParameters { Type = RopeType.LongRope, ShortFactor = shortF, LongFactor = longF, OriginalMaxPositionEmbeddings = 64 },
                [.. Plain(16, 1e4).Select((w, j) => w / longF[j])], 1),
            _ => throw new ArgumentException(name),
        };
    }

    [Theory]
    [MemberData(nameof(FixtureTypes))]
    public void HfTinyFixtureTables(string name)
    {
        var (rope, expected, magnitude) = Fixture(name);
        var schedule = RopeMethods.FromConfig(Tiny(rope));
        var table = schedule.For(200);
        Close(expected, table.InvFreq);
        Close(magnitude, table.Magnitude, 1e-6, "magnitude");
        Assert.Equal(name is "dynamic" or "longrope", schedule.IsLengthDependent);
        if (name == "longrope")
        {
            Close([.. Plain(16, 1e4).Select((w, j) => w / new[] { 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7 }[j])], schedule.For(64).InvFreq);
            Assert.Same(schedule.For(200), schedule.For(65));
        }
        if (name == "dynamic") Close(Plain(16, 1e4), schedule.For(64).InvFreq);
    }

    [Fact]
    public void HfTinyFixtureConfigsMatchTheseParameters()
    {
        // Guards the hand-built records above against the fixture files drifting.
        var dir = SharedData.RepoPath("tests/fixtures/hf-tiny");
        if (dir is null) return;
        foreach (var name in new[] { "default", "linear", "dynamic", "yarn", "yarn-b", "llama3", "longrope" })
        {
            string json = File.ReadAllText(Path.Combine(dir, name, "config.json"));
            Assert.Contains("\"head_dim\": 16", json);
            Assert.Contains("\"max_position_embeddings\": 64", json);
            Assert.Contains($"\"rope_type\": \"{(name == "yarn-b" ? "yarn" : name)}\"", json);
        }
    }

    [Fact]
    public void MissingRequiredKeysAreModelFormatErrors()
    {
        var e = Assert.Throws<ModelFormatException>(() => RopeMethods.FromConfig(Tiny(new RopeParameters { Type = RopeType.Linear })));
        Assert.Contains("rope_parameters.factor", e.Message);
        e = Assert.Throws<ModelFormatException>(() => RopeMethods.FromConfig(Tiny(new RopeParameters { Type = RopeType.Llama3, Factor = 8 })));
        Assert.Contains("low_freq_factor", e.Message);
        Assert.Throws<ModelFormatException>(() => RopeMethods.FromConfig(Tiny(new RopeParameters { Type = RopeType.LongRope })));
        Assert.Throws<ArgumentException>(() => LongRope.Build(16, 1e4, new float[3], 1f, 1));
    }
}

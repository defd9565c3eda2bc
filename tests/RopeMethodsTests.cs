// RopeMethods.Parse / Default / Describe and RopeTableFile save/load (round trip and one-line errors naming the file).
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~RopeMethodsTests"
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;
using Xunit;

namespace LlamaRun.Tests;

public class RopeMethodsTests
{
    // The austen model's geometry: head_dim 64, theta 1e4, trained at 512.
    private static readonly LlamaConfig Austen = RopeTableTests.Tiny(new RopeParameters(), maxPos: 512, headDim: 64);

    [Theory]
    [InlineData("none", "default", 0)]
    [InlineData("pi", "linear", 32)]
    [InlineData("linear:factor=2", "linear", 32)]
    [InlineData("ntk", "ntk", 31)]
    [InlineData("yarn", "yarn", 28)]
    [InlineData("llama3", "llama3", -1)]
    [InlineData("abf:base=500000", "abf(base=500000)", 31)]
    [InlineData("eabf", "eabf", 31)]
    [InlineData("dprope", "dprope", 21)]
    [InlineData("dprope:n=10", "dprope", 10)]
    [InlineData("dprope-plus", "dprope-plus", -1)]
    public void ParseBuildsEachMethod(string spec, string method, int interpolated)
    {
        var schedule = RopeMethods.Parse(spec, Austen, 8192);
        var t = schedule.For(8192);
        Assert.Equal(method, t.Method);
        Assert.Equal(32, t.InvFreq.Length);
        if (interpolated >= 0) Assert.Equal(interpolated, t.InterpolatedPairs);
        Assert.All(t.InvFreq, w => Assert.True(w > 0 && float.IsFinite(w)));
        Assert.StartsWith("rope " + method, RopeMethods.Describe(schedule));
    }

    [Fact]
    public void ParseOptionsAndErrors()
    {
        Assert.Equal(2.0, RopeMethods.Parse("pi:factor=2", Austen, 8192).Base.Factor);
        Assert.Equal(16.0, RopeMethods.Parse("yarn", Austen, 8192).Base.Factor);
        Assert.True(RopeMethods.Parse("dynamic", Austen, 8192).IsLengthDependent);
        Assert.NotNull(RopeMethods.Parse("dprope-plus:q=1", Austen, 4096).Base.QueryScale);
        Assert.Equal(1f, RopeMethods.Parse("dprope-plus:mag=0", Austen, 4096).Base.Magnitude);
        Assert.Contains("unknown method", Assert.Throws<ArgumentException>(() => RopeMethods.Parse("rope-x", Austen, 4096)).Message);
        Assert.Contains("unknown key", Assert.Throws<ArgumentException>(() => RopeMethods.Parse("yarn:fcator=2", Austen, 4096)).Message);
        Assert.Contains("not a number", Assert.Throws<ArgumentException>(() => RopeMethods.Parse("yarn:factor=x", Austen, 4096)).Message);
        Assert.Contains("longrope", Assert.Throws<ArgumentException>(() => RopeMethods.Parse("longrope", Austen, 4096)).Message);
        Assert.ThrowsAny<ArgumentException>(() => RopeMethods.Parse("pi:factor=0.5", Austen, 4096));
    }

    [Fact]
    public void DefaultIsPlainWithinTrainedLengthAndLeakyReRopeBeyond()
    {
        Assert.Equal("default", RopeMethods.Default(Austen, 512).Base.Method);
        // Past the trained 512: leaky-rerope with window 128, the farthest of 4096 keys seen at 3/4 of 512.
        var d = RopeMethods.Default(Austen, 4096).Base;
        Assert.Equal("leaky-rerope", d.Method);
        Assert.Equal(128, d.Remap!.Window);
        Assert.InRange(d.Remap.Distance(0, 4095, 0), 383.9f, 384f);
        Assert.Equal(RopeMethods.Parse("none", Austen, 4096).Base.InvFreq, d.InvFreq);
        Assert.True(d.Remap.SameAs(RopeMethods.Parse("leaky-rerope", Austen, 4096).Base.Remap));
        Assert.Matches(@"^rope leaky-rerope: factor 15.5, query scale log_256\(m\+1\) from layer 0, leaky-rerope window 128, group 15.5 \(exact division\)$", d.Describe());
        Assert.True(RopeMethods.DefaultRemaps(Austen, 4096, fastRemap: true));
        Assert.False(RopeMethods.DefaultRemaps(Austen, 512, fastRemap: true));
        Assert.False(RopeMethods.DefaultRemaps(Austen, 4096, fastRemap: false));
        Assert.True(RopeMethods.IsRemap("Selfextend:g=4") && RopeMethods.IsRemap("dpe") && !RopeMethods.IsRemap("yarn:factor=4"));
        // Where attention cannot run a remap at full speed: dprope-plus.
        var f = RopeMethods.Default(Austen, 4096, fastRemap: false).Base;
        Assert.Equal("dprope-plus", f.Method);
        Assert.Equal(8.0, f.Factor);
        Assert.Equal(RopeMethods.Parse("dprope-plus", Austen, 4096).Base.InvFreq, f.InvFreq);
        Assert.Matches(@"^rope dprope-plus: factor 8, \d+/32 pairs interpolated, magnitude 1\.2079$", f.Describe());
        // A checkpoint with its own scaling keeps it.
        var yarn = RopeTableTests.Tiny(new RopeParameters { Type = RopeType.Yarn, Factor = 4, OriginalMaxPositionEmbeddings = 64 });
        Assert.Equal("yarn", RopeMethods.Default(yarn, 1024).Base.Method);
    }

    [Fact]
    public void TableFileRoundTrips()
    {
        var t = RopeMethods.Parse("eabf", Austen, 4096).Base with { Magnitude = 1.25f, Factor = 8 };
        string path = Path.Combine(Path.GetTempPath(), $"rope-{Guid.NewGuid():N}.json");
        try
        {
            RopeTableFile.Save(t, path);
            var back = RopeTableFile.Load(path, expectedRotaryDim: 64);
            Assert.Equal(t.InvFreq, back.InvFreq);
            Assert.Equal(t.Magnitude, back.Magnitude);
            Assert.Equal(t.QueryScale, back.QueryScale);
            Assert.Equal(t.Method, back.Method);
            Assert.Equal(t.Factor, back.Factor);
            var e = Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path, expectedRotaryDim: 128));
            Assert.StartsWith(path + ":", e.Message);
        }
        finally { File.Delete(path); }
    }

    [Theory]
    [InlineData("{\"format\":\"llama-run-rope-table\",\"version\":1,\"method\":\"x\",\"factor\":1,\"magnitude\":1,\"inv_freq\":[1,0.5", "not valid JSON")]
    [InlineData("{\"format\":\"llama-run-rope-table\",\"version\":1,\"method\":\"x\",\"factor\":1,\"magnitude\":1}", "missing \"inv_freq\"")]
    [InlineData("{\"format\":\"other\",\"version\":1}", "\"format\"")]
    [InlineData("{\"format\":\"llama-run-rope-table\",\"version\":2}", "version")]
    [InlineData("{\"format\":\"llama-run-rope-table\",\"version\":1,\"method\":\"x\",\"factor\":1,\"magnitude\":1,\"inv_freq\":[1,\"a\"]}", "inv_freq[1]")]
    [InlineData("{\"format\":\"llama-run-rope-table\",\"version\":1,\"method\":\"x\",\"factor\":1,\"magnitude\":-1,\"inv_freq\":[1]}", "magnitude")]
    [InlineData("[1,2]", "expected a JSON object")]
    public void TableFileErrorsNameTheFile(string json, string problem)
    {
        string path = Path.Combine(Path.GetTempPath(), $"rope-bad-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        try
        {
            var e = Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path));
            Assert.StartsWith(path + ":", e.Message);
            Assert.Contains(problem, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally { File.Delete(path); }
        Assert.Contains("cannot read", Assert.Throws<ModelFormatException>(() => RopeTableFile.Load(path)).Message);
    }
}

// rope-opt in-process: the acceptance runs (--json reproduces the DPRoPE paper's Table 3), --out, --plot, -m and errors.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~RopeOptTests"
using System.Text.Json;
using System.Xml.Linq;
using LlamaRun.Rope;
using LlamaRun.RopeOpt;
using Xunit;

namespace LlamaRun.Tests;

public class RopeOptTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = RopeOptCli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Theory]
    [InlineData("8192", 24.08, 25.63, 6.71)]
    [InlineData("16384", 33.67, 35.44, 22.92)]
    public void JsonReproducesPaperTable3(string target, double pi, double yarn, double dprope)
    {
        var (code, stdout, stderr) = Run("--head-dim", "128", "--base", "10000", "--orig", "4096", "--target", target,
            "--compare", "pi,yarn,dprope", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var d = doc.RootElement.GetProperty("disturbance");
        Assert.Equal(3, d.EnumerateObject().Count());
        RopeTableTests.Close(pi, d.GetProperty("pi").GetDouble() * 1e3, 5e-3, "pi");
        RopeTableTests.Close(yarn, d.GetProperty("yarn").GetDouble() * 1e3, 5e-3, "yarn");
        RopeTableTests.Close(dprope, d.GetProperty("dprope").GetDouble() * 1e3, 5e-3, "dprope");
        Assert.Equal(64, doc.RootElement.GetProperty("per_pair").GetProperty("pi").GetArrayLength());
    }

    [Fact]
    public void OutAndPlotWriteUsableFiles()
    {
        string dir = Directory.CreateTempSubdirectory("rope-opt-").FullName;
        try
        {
            string table = Path.Combine(dir, "t.json"), svg = Path.Combine(dir, "p.svg");
            var (code, stdout, stderr) = Run("--head-dim", "64", "--base", "10000", "--orig", "512", "--target", "4096",
                "--compare", "yarn,dprope:t=0.001,dprope-plus", "--out", table, "--plot", svg);
            Assert.True(code == 0, stderr);
            Assert.Contains("dprope:t=0.001", stdout);
            Assert.Contains("saved/selected: rope dprope-plus: factor 8", stdout);
            var loaded = RopeTableFile.Load(table, 64);
            var expected = DpropePlus.Build(new DpropeSetup(64, 10000, 512, 4096), new DpropePlusOptions());
            Assert.Equal(expected.InvFreq, loaded.InvFreq);
            Assert.Equal(expected.Magnitude, loaded.Magnitude);
            var x = XDocument.Parse(File.ReadAllText(svg));
            Assert.Equal("svg", x.Root!.Name.LocalName);
            string text = string.Concat(x.Descendants().Where(e => e.Name.LocalName == "text").Select(e => e.Value + "\n"));
            foreach (var label in new[] { "yarn (mean", "dprope-plus (mean", "pre-trained, m < 512", "extrapolated, m < 4096", "pair j", "2pi" })
                Assert.Contains(label, text);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ReadsTheModelDirectory()
    {
        var model = SharedData.RepoPath("models/austen");
        if (model is null) return;
        var (code, stdout, stderr) = Run("-m", model, "--target", "2048", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(64, doc.RootElement.GetProperty("rotary_dim").GetInt32());
        Assert.Equal(512, doc.RootElement.GetProperty("orig").GetInt32());
        Assert.True(doc.RootElement.GetProperty("disturbance").GetProperty("dprope-plus").GetDouble() > 0);
    }

    [Fact]
    public void BadInputGivesOneLineErrors()
    {
        var (code, _, err) = Run("--head-dim", "128", "--orig", "4096");
        Assert.Equal(1, code);
        Assert.Contains("--target is required", err);
        (code, _, err) = Run("--frobnicate");
        Assert.Equal(2, code);
        Assert.Contains("unknown argument", err);
        (code, _, err) = Run("--head-dim", "x");
        Assert.Equal(2, code);
        (code, _, err) = Run("-m", "/nonexistent/model", "--target", "1024");
        Assert.Equal(1, code);
        Assert.Contains("/nonexistent/model/config.json: file not found", err);
        (code, _, err) = Run("--head-dim", "128", "--orig", "4096", "--target", "8192", "--compare", "bogus");
        Assert.Equal(1, code);
        Assert.Contains("unknown method", err);
        (code, _, err) = Run("--head-dim", "128", "--orig", "4096", "--target", "8192", "--compare", "yarn,selfextend");
        Assert.Equal(1, code);
        Assert.Contains("selfextend remaps positions", err);
    }

    // DPE detection on the passkey model (trained at 256) at 512: one passkey trial a depth per size, CPU backend.
    [Fact]
    public void DetectWritesADpeTable()
    {
        if (SharedData.Path("models/austen-passkey") is not { } dir) return;
        string table = Path.Combine(Path.GetTempPath(), $"dpe-{Environment.ProcessId}.json");
        try
        {
            var (code, stdout, stderr) = Run("detect", "-m", dir, "--target", "512", "--trials", "1", "--device", "cpu", "--out", table);
            Assert.True(code == 0, stderr);
            Assert.Contains("detect: 4 groups of 8 pairs, window 64, others held at 4, sizes 1,2,4", stderr);
            var t = RopeTableFile.Load(table, 64);
            Assert.Equal(64, t.Remap!.Window);
            Assert.All(t.Remap.Group, g => Assert.Contains(g, new[] { 1f, 2f, 4f }));
            string spec = stdout.Split('\n').Single(l => l.StartsWith("spec: ", StringComparison.Ordinal))[6..].Trim();
            var config = LlamaRun.Model.LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
            Assert.True(t.Remap.SameAs(RopeMethods.Parse(spec, config, 512).Base.Remap), spec);
        }
        finally
        {
            File.Delete(table);
        }
        Assert.Contains("not past the trained length 256", Run("detect", "-m", dir, "--target", "256", "--device", "cpu").Err);
        Assert.Equal(2, Run("detect", "--target", "512").Code);
    }

    // --topk: the key dims (24 of 32 pairs in each of 4 layers x 2 KV heads) go into the table, and the detection uses them.
    [Fact]
    public void DetectWithTopKWritesKeyDims()
    {
        if (SharedData.Path("models/austen-passkey") is not { } dir) return;
        string table = Path.Combine(Path.GetTempPath(), $"dpe-topk-{Environment.ProcessId}.json");
        try
        {
            var (code, stdout, stderr) = Run("detect", "-m", dir, "--target", "512", "--trials", "1", "--topk", "24", "--device", "cpu", "--out", table);
            Assert.True(code == 0, stderr);
            Assert.Contains("key dims: the top 24 of 32 pairs in each of 4 layers x 2 KV heads", stderr);
            Assert.Contains("without the key dims", stdout);
            var keyDims = RopeTableFile.Load(table, 64).Remap!.KeyDims!;
            Assert.Equal((4, 2, 32), (keyDims.Layers, keyDims.KvHeads, keyDims.Pairs));
            for (int l = 0; l < 4; l++)
                for (int h = 0; h < 2; h++) Assert.Equal(24, keyDims.SelectedPairs(l, h).Length);
        }
        finally
        {
            File.Delete(table);
        }
        Assert.Contains("more than the 32 rotary pairs", Run("detect", "-m", dir, "--target", "512", "--topk", "40", "--device", "cpu").Err);
    }

    // keydims: DPE's key dims added to another remap (Self-Extend), kept by the table; a frequency-only spec is refused.
    [Fact]
    public void KeyDimsAddsTheSelectionToARemap()
    {
        if (SharedData.Path("models/austen-passkey") is not { } dir) return;
        string table = Path.Combine(Path.GetTempPath(), $"se-keydims-{Environment.ProcessId}.json");
        try
        {
            var (code, stdout, stderr) = Run("keydims", "-m", dir, "--rope", "selfextend:w=64", "--target", "1024", "--topk", "16", "--trials", "1", "--device", "cpu", "--out", table);
            Assert.True(code == 0, stderr);
            Assert.Contains("grouped on 16 of 32 pairs a KV head", stdout);
            var remap = RopeTableFile.Load(table, 64).Remap!;
            Assert.Equal("selfextend", remap.Kind);
            Assert.Equal(16, remap.KeyDims!.SelectedPairs(3, 1).Length);
        }
        finally
        {
            File.Delete(table);
        }
        var refused = Run("keydims", "-m", dir, "--rope", "yarn", "--target", "1024", "--topk", "16", "--device", "cpu", "--out", table);
        Assert.Equal(1, refused.Code);
        Assert.Contains("not an index remap", refused.Err);
        Assert.Equal(2, Run("keydims", "-m", dir, "--topk", "16").Code);
    }
}

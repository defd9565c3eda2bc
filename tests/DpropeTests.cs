// DPRoPE against its paper (Table 3, x1e-3) and ROPE.md 3.7's per-pair selections; dprope-plus's recipe properties.
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~DpropeTests"
using System.Diagnostics;
using LlamaRun.Core;
using LlamaRun.Rope;
using Xunit;

namespace LlamaRun.Tests;

public class DpropeTests
{
    private static readonly DpropeSetup Llama2At8k = new(128, 10000, 4096, 8192);
    private static readonly DpropeSetup Llama2At16k = new(128, 10000, 4096, 16384);

    private static int[] Range(int from, int to) => [.. Enumerable.Range(from, to - from + 1)];

    [Theory]
    [InlineData(8192, 24.08, 25.63, 6.71)]
    [InlineData(16384, 33.67, 35.44, 22.92)]
    public void ReproducesPaperTable3(int target, double pi, double yarn, double dprope)
    {
        var s = Llama2At8k with { TargetLength = target };
        double scale = s.Scale;
        double Mean(float[] inv) => Dprope.MeanDisturbance(s, inv) * 1e3;
        RopeTableTests.Close(pi, Mean(PlainRope.Linear(128, 10000, scale).InvFreq), 5e-3, "PI");
        RopeTableTests.Close(yarn, Mean(YarnRope.Build(128, 10000, new YarnOptions(scale, 4096)).InvFreq), 5e-3, "YaRN");
        RopeTableTests.Close(dprope, Dprope.Paper(s).MeanDisturbance * 1e3, 5e-3, "DPRoPE");
        // Pure extrapolation: ROPE.md 3.6 (float32 pipeline) 182.34 / 302.23.
        RopeTableTests.Close(target == 8192 ? 182.34 : 302.23, Mean(PlainRope.Default(128, 10000).InvFreq), 5e-3, "extrapolation");
    }

    [Fact]
    public void SelectionsMatchReferenceCode()
    {
        var r4 = Dprope.Paper(Llama2At16k);
        int[] t0 = [1, 2, 4, 8, 10, 21, 25, 28, .. Range(30, 63)];
        Assert.Equal(t0, Enumerable.Range(0, 64).Where(j => r4.Choice[j] == 1).ToArray());
        var n64 = Dprope.Paper(Llama2At16k, new DpropeSelection(ChangedPairs: 32));
        int[] expected = [10, 31, 32, 33, .. Range(35, 44), .. Range(46, 63)];
        Assert.Equal(expected, Enumerable.Range(0, 64).Where(j => n64.Choice[j] == 1).ToArray());
        // Any t in [1.461e-3, 2.131e-3) gives the n = 64 dims choice.
        Assert.Equal(n64.Choice, Dprope.Paper(Llama2At16k, new DpropeSelection(Threshold: 1.8e-3)).Choice);
        // Per-pair values (x1e-3) of ROPE.md 3.7.
        RopeTableTests.Close(4.2807, r4.Disturbance[0][0] * 1e3, 1e-4); RopeTableTests.Close(4.4205, r4.Disturbance[1][0] * 1e3, 1e-4);
        RopeTableTests.Close(305.1876, r4.Disturbance[0][22] * 1e3, 1e-5); RopeTableTests.Close(780.5727, r4.Disturbance[1][22] * 1e3, 1e-5);
        var r2 = Dprope.Paper(Llama2At8k);
        int[] t0s2 = [2, 3, 4, 5, 6, 8, 9, 10, 15, 16, 17, 18, 19, 28, .. Range(30, 44), .. Range(46, 63)];
        Assert.Equal(t0s2, Enumerable.Range(0, 64).Where(j => r2.Choice[j] == 1).ToArray());
        var n80 = Dprope.Paper(Llama2At8k, new DpropeSelection(ChangedPairs: 40));
        int[] n80Pairs = [2, 4, 5, 6, 9, 10, 17, 28, 30, .. Range(32, 44), .. Range(46, 63)];
        Assert.Equal(n80Pairs, Enumerable.Range(0, 64).Where(j => n80.Choice[j] == 1).ToArray());
    }

    [Fact]
    public void HistogramCountsEveryPositionInTheRightBin()
    {
        var c = Dprope.AngleCounts(0.01f, 1000, 360);
        Assert.Equal(1000, c.Sum());
        // angles 0 .. 9.99 rad: bin k holds positions with m*0.01 in [k*2pi/360, (k+1)*2pi/360) (plus the second turn).
        int expected0 = Enumerable.Range(0, 1000).Count(m => (int)((m * 0.01f % (float)(2 * Math.PI)) * (float)(360 / (2 * Math.PI))) == 0);
        Assert.Equal(expected0, c[0]);
        Assert.Equal(new[] { 4, 0, 0 }, Dprope.AngleCounts(0f, 4, 3));
        Assert.Equal(0.0, Dprope.Disturbance(c, 1000, c, 1000), 12);
        // 1000 positions cover 1 rad, 4000 cover 4 rad: a quarter of the mass stays, D is about ln 4.
        var p = Dprope.AngleCounts(0.001f, 1000, 360);
        Assert.InRange(Dprope.Disturbance(p, 1000, Dprope.AngleCounts(0.001f, 4000, 360), 4000), 1.3, 1.45);
    }

    [Fact]
    public void SixteenKTimesManyCandidatesIsFast()
    {
        Dprope.Paper(new DpropeSetup(128, 10000, 4096, 8192)); // warm up
        var sw = Stopwatch.StartNew();
        var t = DpropePlus.Build(new DpropeSetup(128, 10000, 4096, 65536), new DpropePlusOptions { Steps = 8 });
        sw.Stop();
        Assert.True(sw.Elapsed.TotalSeconds < 5, $"dprope-plus at 64k took {sw.Elapsed.TotalSeconds:0.00} s");
        Assert.Equal(64, t.InvFreq.Length);
    }

    [Theory]
    [InlineData(64, 512, 1024)]
    [InlineData(64, 512, 8192)]
    [InlineData(128, 4096, 16384)]
    public void DpropePlusFollowsItsRecipe(int dim, int trained, int target)
    {
        var setup = new DpropeSetup(dim, 10000, trained, target);
        var o = new DpropePlusOptions();
        var t = DpropePlus.Build(setup, o);
        var plain = PlainRope.Default(dim, 10000).InvFreq;
        double s = setup.Scale;
        for (int j = 0; j < plain.Length; j++)
        {
            double lambda = 2 * Math.PI / plain[j], divisor = plain[j] / (double)t.InvFreq[j];
            if (lambda * o.KeepTurns <= trained) Assert.Equal(1.0, divisor); // turned fully in training: kept
            if (lambda > target) RopeTableTests.Close(s, divisor, 1e-6, $"pair {j}"); // never completes a turn: fully interpolated
            Assert.InRange(divisor, 1.0, s * (1 + 1e-6));
        }
        RopeTableTests.Close(0.1 * Math.Log(s) + 1, t.Magnitude, 1e-6);
        Assert.Null(t.QueryScale);
        Assert.NotNull(DpropePlus.Build(setup, o with { QueryScale = true }).QueryScale);
        // Its disturbance stays well below extrapolation and within reach of the paper's selection.
        double d = Dprope.MeanDisturbance(setup, t.InvFreq), paper = Dprope.Paper(setup).MeanDisturbance;
        Assert.True(d < 0.25 * Dprope.MeanDisturbance(setup, plain), $"D {d}");
        Assert.True(d < 2 * paper + 0.01, $"D {d} vs paper {paper}");
        Assert.Equal(plain, DpropePlus.Build(setup with { TargetLength = trained }, o).InvFreq);
    }
}

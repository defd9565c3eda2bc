// Sampler: greedy, top-k/top-p/min-p filtering, repetition penalty, seeded determinism.
// dotnet test tests/Tests.csproj --filter FullyQualifiedName~SamplerTests
using LlamaRun.Text;
using Xunit;

namespace LlamaRun.Tests;

public class SamplerTests
{
    [Fact]
    public void GreedyPicksFirstMaximum()
    {
        var s = new Sampler(SamplerOptions.Greedy);
        Assert.Equal(2, s.Sample(new float[] { 1, 2, 5, 5, -1 }, []));
        // The one argmax rule of every backend and the sampler: a NaN ranks above any number (as torch.argmax).
        Assert.Equal(0, s.Sample(new float[] { float.NaN, 3, 1 }, []));
        Assert.Equal(2, s.Sample(new float[] { 1, 3, float.NaN, float.NaN }, []));
    }

    [Fact]
    public void SameSeedSameTokens()
    {
        var logits = Enumerable.Range(0, 100).Select(i => MathF.Sin(i) * 3).ToArray();
        int[] Draw(ulong seed)
        {
            var s = new Sampler(new SamplerOptions(Temperature: 1f, TopK: 0, TopP: 1f, MinP: 0f, Seed: seed));
            return Enumerable.Range(0, 50).Select(_ => s.Sample((float[])logits.Clone(), [])).ToArray();
        }
        Assert.Equal(Draw(7), Draw(7));
        Assert.NotEqual(Draw(7), Draw(8));
    }

    [Fact]
    public void TopKOneIsGreedy()
    {
        var logits = new float[] { 0.1f, 3f, 2.9f, -4f };
        var s = new Sampler(new SamplerOptions(Temperature: 5f, TopK: 1, TopP: 1f, MinP: 0f, Seed: 3));
        for (int i = 0; i < 100; i++) Assert.Equal(1, s.Sample((float[])logits.Clone(), []));
    }

    [Fact]
    public void TopKKeepsExactlyTheKLargestLowestIdOnTies()
    {
        var logits = new float[1000];
        for (int i = 0; i < logits.Length; i++) logits[i] = (i * 7919) % 1000 / 100f;   // a permutation of 0..9.99
        logits[10] = logits[20] = logits[30] = 50f;                                     // three-way tie at the top
        var s = new Sampler(new SamplerOptions(Temperature: 100f, TopK: 2, TopP: 1f, MinP: 0f, Seed: 9));
        var seen = new HashSet<int>();
        for (int i = 0; i < 500; i++) seen.Add(s.Sample((float[])logits.Clone(), []));
        Assert.Equal(new HashSet<int> { 10, 20 }, seen);
    }

    [Fact]
    public void TopPKeepsSmallestPrefixReachingMass()
    {
        // Probabilities 0.5, 0.3, 0.2 at T = 1: top-p 0.6 keeps the first two tokens only.
        var logits = new[] { MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.2f) };
        var s = new Sampler(new SamplerOptions(Temperature: 1f, TopK: 0, TopP: 0.6f, MinP: 0f, Seed: 11));
        var counts = new int[3];
        for (int i = 0; i < 4000; i++) counts[s.Sample((float[])logits.Clone(), [])]++;
        Assert.Equal(0, counts[2]);
        Assert.InRange(counts[0] / 4000.0, 0.58, 0.67);   // 0.5 / 0.8 = 0.625
    }

    [Fact]
    public void MinPDropsUnlikelyTokens()
    {
        var logits = new[] { MathF.Log(0.6f), MathF.Log(0.35f), MathF.Log(0.05f) };
        var s = new Sampler(new SamplerOptions(Temperature: 1f, TopK: 0, TopP: 1f, MinP: 0.1f, Seed: 5));
        for (int i = 0; i < 2000; i++) Assert.NotEqual(2, s.Sample((float[])logits.Clone(), []));
    }

    [Fact]
    public void SamplingFollowsTheDistribution()
    {
        var logits = new[] { MathF.Log(0.7f), MathF.Log(0.2f), MathF.Log(0.1f) };
        var s = new Sampler(new SamplerOptions(Temperature: 1f, TopK: 0, TopP: 1f, MinP: 0f, Seed: 1));
        var counts = new int[3];
        for (int i = 0; i < 20000; i++) counts[s.Sample((float[])logits.Clone(), [])]++;
        Assert.InRange(counts[0] / 20000.0, 0.68, 0.72);
        Assert.InRange(counts[1] / 20000.0, 0.185, 0.215);
        Assert.InRange(counts[2] / 20000.0, 0.09, 0.11);
    }

    [Fact]
    public void RepetitionPenaltyDemotesSeenTokens()
    {
        var s = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 2f });
        Assert.Equal(1, s.Sample(new float[] { 3f, 2f, -1f }, [0]));          // 3/2 = 1.5 < 2
        Assert.Equal(0, s.Sample(new float[] { 3f, 2f, -1f }, [2, 2, 2]));    // only token 2 is penalized
        var t = new float[] { 1f, -1f };
        new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 2f }).Sample(t, [1]);
        Assert.Equal(-2f, t[1]);                                               // negative logits are multiplied
    }

    [Theory]
    [InlineData(-1f, 40, 0.9f, 0f, 1f)]
    [InlineData(1f, -1, 0.9f, 0f, 1f)]
    [InlineData(1f, 40, 0f, 0f, 1f)]
    [InlineData(1f, 40, 1.5f, 0f, 1f)]
    [InlineData(1f, 40, 0.9f, 1f, 1f)]
    [InlineData(1f, 40, 0.9f, 0f, 0f)]
    public void RejectsOutOfRangeSettings(float temp, int topK, float topP, float minP, float penalty) =>
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplerOptions(temp, topK, topP, minP, penalty)));
}

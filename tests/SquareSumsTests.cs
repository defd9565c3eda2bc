// SquareSums (kernels/Device/SquareSums.cs), the integer counters a deferred RMSNorm gathers its sum of squares in:
// terms added by the threads of ILGPU's CPU accelerator (in whatever order they run) must give the same counters in
// any order, a total equal to the exact sum of the terms (each cut at 2^-64) rounded to f32, and NaN for terms out of
// range. Run: dotnet test tests/Tests.csproj --filter SquareSumsTests
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using LlamaRun.Kernels.Device;
using Xunit;

namespace LlamaRun.Tests;

public sealed class SquareSumsTests
{
    private static void AddAll(Index1D i, ArrayView<float> terms, ArrayView<ulong> sums) => SquareSums.Add(sums, terms[i]);

    // The counters after every term was added by a kernel over the terms.
    private static ulong[] Counters(float[] terms)
    {
        using var context = Context.Create(b => b.CPU(new CPUDevice(32, 8, 2)));
        using var accelerator = context.CreateCPUAccelerator(0);
        var kernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ulong>>(AddAll);
        using var t = accelerator.Allocate1D(terms);
        using var sums = accelerator.Allocate1D<ulong>(SquareSums.Words);
        sums.MemSetToZero();
        kernel(terms.Length, t.View, sums.View);
        accelerator.Synchronize();
        return sums.GetAsArray1D();
    }

    private static float Total(ulong[] c) => new SquareSums.Counters(c[0], c[1], c[2], c[3], c[4]).Total();

    // The exact sum of the terms, each cut to a multiple of 2^-64, rounded to f32 (through a double, as Total does).
    private static float Exact(float[] terms)
    {
        var sum = BigInteger.Zero;
        foreach (float p in terms)
        {
            if (p < 5.421010862427522e-20f) continue;
            int e = (int)(BitConverter.SingleToUInt32Bits(p) >> 23);
            var m = new BigInteger((BitConverter.SingleToUInt32Bits(p) & 0x7fffff) | 0x800000);
            int shift = e - 86;
            sum += shift >= 0 ? m << shift : m >> -shift;
        }
        return (float)((double)sum * Math.Pow(2, -64));
    }

    // Non-negative terms over many binades: 2^-70 .. 2^40 (some cut, some spanning two chunks), zeros and subnormals.
    private static float[] Terms(int n, int seed)
    {
        var rng = new Random(seed);
        var terms = new float[n];
        for (int i = 0; i < n; i++)
        {
            terms[i] = (i % 97) switch
            {
                0 => 0f,
                1 => 1e-40f,
                _ => (float)((1 + rng.NextDouble()) * Math.Pow(2, rng.Next(-70, 41))),
            };
        }
        return terms;
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2048, 2)]
    [InlineData(8192, 3)]
    public void TheTotalIsTheExactSumInAnyOrder(int n, int seed)
    {
        var terms = Terms(n, seed);
        var c = Counters(terms);
        var reversed = terms.Reverse().ToArray();
        var shuffled = terms.OrderBy(_ => Random.Shared.Next()).ToArray();
        Assert.Equal(c, Counters(reversed));
        Assert.Equal(c, Counters(shuffled));
        Assert.Equal(0UL, c[4]);
        Assert.Equal(Exact(terms), Total(c));
    }

    [Fact]
    public void ARowsSquaresSumAsInFloat()
    {
        // 4096 squares of values in [-3, 3]: the counters' total against a double sum, within f32 rounding.
        var rng = new Random(7);
        var terms = Enumerable.Range(0, 4096).Select(_ => { float v = 6f * rng.NextSingle() - 3f; return v * v; }).ToArray();
        double reference = terms.Sum(t => (double)t);
        Assert.Equal(reference, Total(Counters(terms)), reference * 1e-7);
        Assert.Equal(1f, Total(Counters([1f])));
        Assert.Equal(0f, Total(Counters([0f, 1e-30f, 1e-40f])));
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(1e29f)]
    public void TermsOutOfRangeMakeTheTotalNaN(float bad)
    {
        var c = Counters([1f, 2f, bad, 3f]);
        Assert.Equal(1UL, c[4]);
        Assert.True(float.IsNaN(Total(c)));
        // The largest term in range (just under 2^96) still counts.
        Assert.Equal(0UL, Counters([7.9e28f])[4]);
    }
}

// CPU SIMD ops against plain scalar loops that accumulate in double, at every length 0..256 (DESIGN R9).
// Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~CpuOpsTests"
using System.Runtime.Intrinsics;
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using Xunit;

namespace LlamaRun.Tests;

public unsafe class CpuOpsTests
{
    public static IEnumerable<object[]> Lengths => Enumerable.Range(0, 257).Select(n => new object[] { n });

    internal static float[] Uniform(int n, int seed, float lo = -1f, float hi = 1f)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * (float)rng.NextDouble();
        return a;
    }

    internal static void Close(double expected, float actual, double tol, string what)
    {
        if (!(Math.Abs(expected - actual) <= tol))
            Assert.Fail($"{what}: expected {expected:R}, got {actual:R} (tolerance {tol:G3})");
    }

    [Fact]
    public void AllLengthsPass()
    {
        // One fact walking 0..256 keeps the test count readable; each op below reports the failing length.
        for (int n = 0; n <= 256; n++)
        {
            RmsNorm(n);
            SwiGluAndAdd(n);
            Softmax(n);
            ArgmaxMatchesScalar(n);
            Embedding(n);
        }
    }

    private static void RmsNorm(int n)
    {
        const int rows = 3;
        var x = Uniform(rows * n, n, -3, 3);
        var w = Uniform(n, n + 1000);
        var dst = new float[rows * n + 1];
        dst[^1] = 42f;
        fixed (float* xp = x, wp = w, dp = dst) CpuOps.RmsNorm(xp, wp, dp, rows, n, 1e-5f);
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < n; i++) ss += (double)x[r * n + i] * x[r * n + i];
            double inv = 1 / Math.Sqrt(ss / n + 1e-5);
            for (int i = 0; i < n; i++)
            {
                double e = x[r * n + i] * inv * w[i];
                Close(e, dst[r * n + i], 1e-6 * (1 + Math.Abs(e)), $"RmsNorm n={n} [{r},{i}]");
            }
        }
        Assert.Equal(42f, dst[^1]);
    }

    private static void SwiGluAndAdd(int n)
    {
        var g = Uniform(n, 2 * n, -20, 20);
        var u = Uniform(n, 2 * n + 1);
        var dst = new float[n + 1];
        dst[^1] = 42f;
        fixed (float* gp = g, up = u, dp = dst) CpuOps.SwiGlu(gp, up, dp, n);
        for (int i = 0; i < n; i++)
        {
            double e = g[i] / (1 + Math.Exp(-(double)g[i])) * u[i];
            Close(e, dst[i], 4e-7 * (Math.Abs(e) + 1e-30) + 1e-30, $"SwiGlu n={n} [{i}]");
        }
        fixed (float* gp = g, up = u, dp = dst) CpuOps.Add(gp, up, dp, n);
        for (int i = 0; i < n; i++) Assert.Equal(g[i] + u[i], dst[i]);
        Assert.Equal(42f, dst[^1]);
    }

    private static void Softmax(int n)
    {
        var x = Uniform(n, 3 * n, -30, 30);
        if (n > 0) x[n / 2] = 80f; // exp(80) overflows f32 unless the max is subtracted
        var dst = new float[n];
        CpuOps.Softmax(x, dst);
        if (n == 0) return;
        double max = x.Max(), sum = x.Sum(v => Math.Exp(v - max));
        for (int i = 0; i < n; i++)
        {
            double e = Math.Exp(x[i] - max) / sum;
            // x - max is rounded to f32 first, so the relative error grows with |x - max|.
            Close(e, dst[i], 1.2e-7 * (Math.Abs(x[i] - max) + 8) * e + 1e-44, $"Softmax n={n} [{i}]");
        }
    }

    private static void ArgmaxMatchesScalar(int n)
    {
        var x = Uniform(n, 4 * n);
        for (int i = 0; i < n; i += 7) x[i] = MathF.Round(x[i] * 3); // plant ties
        int expected = -1;
        for (int i = 0; i < n; i++) if (expected < 0 || x[i] > x[expected]) expected = i;
        Assert.Equal(expected, CpuOps.Argmax(x));
    }

    [Fact]
    public void ArgmaxTiesNaNAndZeros()
    {
        Assert.Equal(-1, CpuOps.Argmax([]));
        Assert.Equal(1, CpuOps.Argmax([1f, 5f, 5f, 5f]));
        var ties = Enumerable.Repeat(2f, 40).ToArray();
        Assert.Equal(0, CpuOps.Argmax(ties));
        ties[0] = 1f;
        Assert.Equal(1, CpuOps.Argmax(ties));
        Assert.Equal(0, CpuOps.Argmax([-0f, 0f]));
        Assert.Equal(2, CpuOps.Argmax([1f, float.PositiveInfinity, float.NaN, 3f, float.NaN]));
        var late = Enumerable.Range(0, 37).Select(i => (float)i).ToArray();
        late[33] = float.NaN;
        Assert.Equal(33, CpuOps.Argmax(late));
        Assert.Equal(3, CpuOps.Argmax([float.NegativeInfinity, float.NegativeInfinity, -1e30f, -1e29f]));
    }

    [Fact]
    public void SoftmaxNaNAndAliasing()
    {
        var x = new[] { 1f, float.NaN, 2f };
        CpuOps.Softmax(x, x);
        Assert.All(x, v => Assert.True(float.IsNaN(v)));
        var y = new[] { 1000f, 1000f };
        CpuOps.Softmax(y, y);
        Assert.Equal([0.5f, 0.5f], y);
    }

    private static void Embedding(int hidden)
    {
        const int vocab = 5;
        var table = Uniform(vocab * hidden, 5 * hidden, -4, 4);
        int[] tokens = [3, 0, 4, 3];
        foreach (var dtype in new[] { DType.F32, DType.F16, DType.BF16 })
        {
            var dst = new float[tokens.Length * hidden + 1];
            dst[^1] = 42f;
            var bits = table.Select(v => dtype == DType.BF16 ? DTypes.F32ToBF16(v) : DTypes.F32ToF16(v)).ToArray();
            fixed (float* tp = table, dp = dst)
            fixed (ushort* bp = bits)
                CpuOps.Embedding(tokens, dtype == DType.F32 ? tp : bp, dp, dtype, hidden);
            for (int t = 0; t < tokens.Length; t++)
                for (int i = 0; i < hidden; i++)
                {
                    int j = tokens[t] * hidden + i;
                    float e = dtype switch { DType.F32 => table[j], DType.F16 => DTypes.F16ToF32(bits[j]), _ => DTypes.BF16ToF32(bits[j]) };
                    Assert.Equal(e, dst[t * hidden + i]);
                }
            Assert.Equal(42f, dst[^1]);
        }
    }

    [Fact]
    public void ElementwiseLargeAndAliased()
    {
        const int n = 70001; // above the single-thread threshold, not a multiple of the chunk
        var g = Uniform(n, 11, -10, 10);
        var u = Uniform(n, 12);
        var dst = (float[])g.Clone();
        fixed (float* dp = dst, up = u) CpuOps.SwiGlu(dp, up, dp, n);
        for (int i = 0; i < n; i++)
        {
            double e = g[i] / (1 + Math.Exp(-(double)g[i])) * u[i];
            Close(e, dst[i], 4e-7 * Math.Abs(e) + 1e-30, $"SwiGlu aliased [{i}]");
        }
        fixed (float* dp = dst, up = u) CpuOps.Add(dp, up, dp, n);
        var x = Uniform(4 * 20000, 13);
        var w = Uniform(20000, 14);
        var y = new float[x.Length];
        fixed (float* xp = x, wp = w, yp = y) CpuOps.RmsNorm(xp, wp, yp, 4, 20000, 1e-6f);
        for (int r = 0; r < 4; r++)
        {
            double ss = 0;
            for (int i = 0; i < 20000; i++) ss += (double)x[r * 20000 + i] * x[r * 20000 + i];
            double inv = 1 / Math.Sqrt(ss / 20000 + 1e-6);
            for (int i = 0; i < 20000; i += 97) Close(x[r * 20000 + i] * inv * w[i], y[r * 20000 + i], 2e-6, "RmsNorm large");
        }
    }

    public static IEnumerable<object[]> MatMulCases =>
        from dtype in new[] { DType.F32, DType.F16, DType.BF16 }
        from tokens in new[] { 1, 3, 17 }
        select new object[] { dtype, tokens };

    [Theory]
    [MemberData(nameof(MatMulCases))]
    public void MatMulAllInnerLengths(DType dtype, int tokens)
    {
        for (int inDim = 0; inDim <= 256; inDim++) CheckMatMul(dtype, tokens, inDim, 7, inDim);
    }

    [Theory]
    [MemberData(nameof(MatMulCases))]
    public void MatMulParallelShapes(DType dtype, int tokens)
    {
        CheckMatMul(dtype, tokens, 256, 300, 1);
        CheckMatMul(dtype, tokens, 1025, 129, 2);
        CheckMatMul(dtype, tokens * 5, 768, 1031, 3);
    }

    private static void CheckMatMul(DType dtype, int tokens, int inDim, int outDim, int seed)
    {
        var x = Uniform(tokens * inDim, seed * 31 + tokens);
        var wf = Uniform(outDim * inDim, seed * 37 + tokens);
        var wbits = wf.Select(v => dtype == DType.BF16 ? DTypes.F32ToBF16(v) : DTypes.F32ToF16(v)).ToArray();
        var dst = new float[tokens * outDim + 1];
        dst[^1] = 42f;
        fixed (float* xp = x, wp = wf, dp = dst)
        fixed (ushort* bp = wbits)
            CpuOps.MatMul(xp, dtype == DType.F32 ? wp : bp, dp, dtype, tokens, inDim, outDim);
        for (int t = 0; t < tokens; t++)
            for (int o = 0; o < outDim; o++)
            {
                double e = 0, mag = 0;
                for (int i = 0; i < inDim; i++)
                {
                    int j = o * inDim + i;
                    double w = dtype switch { DType.F32 => wf[j], DType.F16 => DTypes.F16ToF32(wbits[j]), _ => DTypes.BF16ToF32(wbits[j]) };
                    e += x[t * inDim + i] * w;
                    mag += Math.Abs(x[t * inDim + i] * w);
                }
                // f32 accumulation: error grows with the length and the magnitude of the terms.
                Close(e, dst[t * outDim + o], 2e-7 * Math.Sqrt(inDim + 1) * (mag + 1e-6), $"MatMul {dtype} T={tokens} in={inDim} [{t},{o}]");
            }
        Assert.Equal(42f, dst[^1]);
    }
}

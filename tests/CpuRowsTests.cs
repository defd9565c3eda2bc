// The CPU row readers (engine/Backends/Cpu/CpuRows.cs) against scalar conversions: every F16 bit pattern through the
// natural-order load, the fast pair-order load (finite values exact, specials flagged) and its exact fallback, BF16 pair order, the pair split and merge at lengths 0..256, and the
// decode GEMV over F16 rows holding infinities and NaNs. Run: dotnet test tests/Tests.csproj --filter CpuRowsTests
using System.Runtime.Intrinsics;
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using Xunit;
using static LlamaRun.Tests.CpuOpsTests;

namespace LlamaRun.Tests;

public unsafe class CpuRowsTests
{
    private static void Same(float expected, float actual, string what)
    {
        if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"{what}: expected NaN, got {actual:R}");
        else Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual), $"{what}: expected {expected:R}, got {actual:R}");
    }

    // Element k of a pair-order block of 16: the even element 2k for k < 8, the odd element 2(k-8)+1 otherwise.
    private static int Natural(int k) => k < 8 ? 2 * k : 2 * (k - 8) + 1;

    [Fact]
    public void F16LoadsAreExactForEveryBitPattern()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        fixed (ushort* bp = bits)
            for (int i = 0; i < bits.Length; i += 16)
            {
                var specials = Vector256<ushort>.Zero;
                F16Row.Load16(bp, i, out var even, out var odd, ref specials);
                F16Row.Load16Exact(bp, i, out var exactEven, out var exactOdd);
                Vector256<float> lo = F16Row.Load8(bp, i), hi = F16Row.Load8(bp, i + 8);
                bool anySpecial = false;
                for (int k = 0; k < 16; k++)
                {
                    Same(DTypes.F16ToF32(bits[i + k]), k < 8 ? lo.GetElement(k) : hi.GetElement(k - 8), $"Load8 F16 0x{i + k:x4}");
                    ushort h = bits[i + Natural(k)];
                    float e = DTypes.F16ToF32(h);
                    Same(e, k < 8 ? exactEven.GetElement(k) : exactOdd.GetElement(k - 8), $"exact F16 0x{h:x4}");
                    if (float.IsFinite(e)) Same(e, k < 8 ? even.GetElement(k) : odd.GetElement(k - 8), $"fast F16 0x{h:x4}");
                    else anySpecial = true;
                }
                Assert.Equal(anySpecial, F16Row.AnySpecial(specials));
            }
    }

    [Fact]
    public void Bf16AndF32Load16Orders()
    {
        var f = Uniform(16, 3, -4, 4);
        var b = f.Select(DTypes.F32ToBF16).ToArray();
        var none = Vector256<ushort>.Zero;
        fixed (float* fp = f)
        fixed (ushort* bp = b)
        {
            Bf16Row.Load16(bp, 0, out var even, out var odd, ref none);
            F32Row.Load16(fp, 0, out var lo, out var hi, ref none);
            for (int k = 0; k < 16; k++)
            {
                Same(DTypes.BF16ToF32(b[Natural(k)]), k < 8 ? even.GetElement(k) : odd.GetElement(k - 8), $"BF16 pair slot {k}");
                Same(f[k], k < 8 ? lo.GetElement(k) : hi.GetElement(k - 8), $"F32 slot {k}");
            }
        }
    }

    [Fact]
    public void SplitAndMergePairsInvertEachOtherAtEveryLength()
    {
        for (int n = 0; n <= 256; n++)
        {
            var x = Uniform(n, n);
            var split = new float[n + 1];
            var back = new float[n + 1];
            split[^1] = back[^1] = 42f;
            fixed (float* xp = x, sp = split, bp = back)
            {
                CpuOps.SplitPairs(xp, sp, n);
                CpuOps.MergePairs(sp, bp, n);
            }
            for (int i = 0; i < n; i++)
            {
                int block = i / 16 * 16, k = i - block;
                float expected = block + 16 <= n ? x[block + Natural(k)] : x[i];
                Assert.True(expected == split[i], $"SplitPairs n={n} slot {i}");
                Assert.True(x[i] == back[i], $"MergePairs n={n} element {i}");
            }
            Assert.Equal(42f, split[^1]);
            Assert.Equal(42f, back[^1]);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void F16DecodeGemvKeepsInfinitiesAndNaNs(int tokens)
    {
        const int inDim = 100, outDim = 9;
        var x = Uniform(tokens * inDim, 5);
        var w = Uniform(outDim * inDim, 6).Select(DTypes.F32ToF16).ToArray();
        w[1 * inDim + 3] = 0x7c00;    // +inf inside the vector part of row 1
        w[2 * inDim + 40] = 0xfc00;   // -inf
        w[3 * inDim + 17] = 0x7e00;   // NaN
        w[4 * inDim + 99] = 0x7c00;   // +inf in the scalar tail
        w[5 * inDim + 5] = 0x7c00;    // +inf and -inf: NaN
        w[5 * inDim + 6] = 0xfc00;
        var dst = new float[tokens * outDim];
        fixed (float* xp = x, dp = dst)
        fixed (ushort* wp = w)
            CpuOps.MatMul(xp, wp, dp, DType.F16, tokens, inDim, outDim);
        for (int t = 0; t < tokens; t++)
            for (int o = 0; o < outDim; o++)
            {
                double e = 0, mag = 0;
                for (int i = 0; i < inDim; i++)
                {
                    double term = (double)x[t * inDim + i] * DTypes.F16ToF32(w[o * inDim + i]);
                    e += term;
                    mag += Math.Abs(term);
                }
                float got = dst[t * outDim + o];
                if (double.IsFinite(e)) Close(e, got, 2e-7 * Math.Sqrt(inDim + 1) * (mag + 1e-6), $"F16 GEMV T={tokens} row {o}");
                else Same((float)e, got, $"F16 GEMV T={tokens} row {o}");
            }
    }
}

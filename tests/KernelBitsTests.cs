// The numeric helpers that CPU ops and GPU kernels share (kernels/Device): f16 conversions against System.Half
// (exhaustive widening, 4.3 million narrowing samples), bf16 rounding ties and NaNs, RoPE cos/sin against Math.Cos/Sin.
// Run: dotnet test tests/Tests.csproj --filter KernelBitsTests
using LlamaRun.Kernels.Device;
using Xunit;

namespace LlamaRun.Tests;

public sealed class KernelBitsTests
{
    [Fact]
    public void F16WideningIsExactForEveryBitPattern()
    {
        for (int h = 0; h <= ushort.MaxValue; h++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h), actual = F16.ToF32((ushort)h);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"0x{h:x4}");
            else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(actual));
        }
    }

    [Fact]
    public void F16NarrowingRoundsAsSystemHalf()
    {
        // Every 997th f32 bit pattern (both signs, all exponents), plus the boundaries around overflow and subnormals.
        var samples = new List<uint>();
        for (ulong u = 0; u <= uint.MaxValue; u += 997) samples.Add((uint)u);
        foreach (uint b in new uint[] { 0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x38800000, 0x387fffff, 0x33000000, 0x33000001, 0x32ffffff, 0x7f800000, 0xff800000 })
        {
            samples.Add(b);
            samples.Add(b | 0x80000000u);
        }
        foreach (uint bits in samples)
        {
            float f = BitConverter.UInt32BitsToSingle(bits);
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f), actual = F16.FromF32(f);
            if (float.IsNaN(f)) Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(actual)), $"0x{bits:x8}");
            else Assert.True(expected == actual, $"f32 0x{bits:x8}: expected f16 0x{expected:x4}, got 0x{actual:x4}");
        }
    }

    [Fact]
    public void Bf16RoundsToNearestEvenAndKeepsNaNQuiet()
    {
        Assert.Equal(0x3f80, Bf16.FromF32(BitConverter.UInt32BitsToSingle(0x3f808000)));   // tie, even below
        Assert.Equal(0x3f82, Bf16.FromF32(BitConverter.UInt32BitsToSingle(0x3f818000)));   // tie, even above
        Assert.Equal(0x3f81, Bf16.FromF32(BitConverter.UInt32BitsToSingle(0x3f808001)));
        Assert.Equal(0x7f80, Bf16.FromF32(float.PositiveInfinity));
        Assert.Equal(0x7f80, Bf16.FromF32(BitConverter.UInt32BitsToSingle(0x7f7f8000)));   // rounds up to infinity
        ushort nan = Bf16.FromF32(BitConverter.UInt32BitsToSingle(0x7f800001));             // signalling NaN payload in the low half
        Assert.True(float.IsNaN(Bf16.ToF32(nan)));
        Assert.Equal(Bf16.Pack(1.5f, -2f), Bf16.FromF32(1.5f) | ((uint)Bf16.FromF32(-2f) << 16));
        Assert.Equal(1.5f, Bf16.Lo(Bf16.Pack(1.5f, -2f)));
        Assert.Equal(-2f, Bf16.Hi(Bf16.Pack(1.5f, -2f)));
    }

    [Fact]
    public void RopeCosSinMatchesDoublePrecisionToTheLastBit()
    {
        // Angles of real tables: positions up to 2^24 times frequencies from 1 down to 1e-6.
        var rng = new Random(7);
        int exact = 0, total = 0;
        for (int i = 0; i < 200_000; i++)
        {
            int pos = i < 1000 ? i : rng.Next(1 << 24);
            float inv = (float)Math.Pow(10000, -rng.NextDouble()) * (i % 3 == 0 ? 1f : 0.01f);
            float angle = RopeMath.Angle(pos, inv);
            RopeMath.CosSin(angle, out float c, out float s);
            float ec = (float)Math.Cos(angle), es = (float)Math.Sin(angle);
            Assert.True(Math.Abs(c - ec) <= 6e-8f && Math.Abs(s - es) <= 6e-8f, $"angle {angle}: cos {c} vs {ec}, sin {s} vs {es}");
            total++;
            if (c == ec && s == es) exact++;
        }
        Assert.True(exact > 0.9999 * total, $"{exact} of {total} exact");
    }

    [Fact]
    public void QueryScaleIsOneInsideTheContextAndLogarithmicPastIt()
    {
        Assert.Equal(1f, RopeMath.QueryScale(0, 4096f));
        Assert.Equal(1f, RopeMath.QueryScale(4094, 4096f));
        Assert.Equal(MathF.Log(16384) / MathF.Log(4096), RopeMath.QueryScale(16383, 4096f), 6);
    }
}

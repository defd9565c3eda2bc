// Rounding F32 activations to the precision of a narrower type, in place, to reproduce a framework that computes
// in bf16 or f16 (transformers with torch_dtype bfloat16 rounds after every op), plus the scalar and span forms the
// ops use for their mid-op roundings, and the f32-to-bf16 store of the KV cache. Tests: CpuOpsTests.Round*,
// CpuOpsTests.ConvertToBf16, CpuOpsBf16Tests.
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    /// <summary>x[i] = (float)(dtype)x[i], round to nearest even; F32 leaves x unchanged.</summary>
    public static void Round(float* x, long n, DType dtype)
    {
        if (dtype == DType.F32) return;
        long i = 0;
        if (dtype == DType.BF16 && Vector256.IsHardwareAccelerated)
        {
            // bf16 keeps the top 16 bits: add 0x7fff plus the lowest kept bit, then clear the low half.
            var bias = Vector256.Create(0x7fffu);
            var one = Vector256.Create(1u);
            var mask = Vector256.Create(0xffff0000u);
            var expMask = Vector256.Create(0x7f800000u);
            for (; i + 8 <= n; i += 8)
            {
                var u = Vector256.Load((uint*)x + i);
                var rounded = (u + bias + ((u >> 16) & one)) & mask;
                // Inf and NaN (exponent all ones) keep their bits but truncated, NaN forced quiet.
                var special = Vector256.Equals(u & expMask, expMask);
                var kept = (u & mask) | (Vector256.Create(0x00400000u) & Vector256.GreaterThan(u & Vector256.Create(0x007fffffu), Vector256<uint>.Zero));
                Vector256.ConditionalSelect(special, kept, rounded).Store((uint*)x + i);
            }
        }
        for (; i < n; i++)
            x[i] = dtype == DType.BF16 ? DTypes.BF16ToF32(DTypes.F32ToBF16(x[i])) : DTypes.F16ToF32(DTypes.F32ToF16(x[i]));
    }

    /// <summary>Rounds x in place to dtype, as Round(float*, long, DType).</summary>
    public static void Round(Span<float> x, DType dtype)
    {
        fixed (float* p = x) Round(p, x.Length, dtype);
    }

    /// <summary>dst[i] = the bf16 bits of x[i], rounded to nearest even with NaN kept quiet (as DTypes.F32ToBF16).</summary>
    public static void ConvertToBf16(float* x, ushort* dst, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                Vector256.Narrow(Bf16Bits(Vector256.Load((uint*)x + i)), Bf16Bits(Vector256.Load((uint*)x + i + 8))).Store(dst + i);
        for (; i < n; i++) dst[i] = DTypes.F32ToBF16(x[i]);
    }

    // The bf16 bits (in the low half of each lane) of 8 f32 bit patterns, exactly as DTypes.F32ToBF16.
    private static Vector256<uint> Bf16Bits(Vector256<uint> u)
    {
        var rounded = (u + Vector256.Create(0x7fffu) + ((u >> 16) & Vector256.Create(1u))) >> 16;
        var nan = Vector256.GreaterThan((u & Vector256.Create(0x7fffffffu)).AsInt32(), Vector256.Create(0x7f800000)).AsUInt32();
        return Vector256.ConditionalSelect(nan, (u >> 16) | Vector256.Create(0x40u), rounded);
    }

    // One value rounded to dtype (nearest even); F32 returns x.
    internal static float RoundTo(float x, DType dtype) => dtype switch
    {
        DType.BF16 => DTypes.BF16ToF32(DTypes.F32ToBF16(x)),
        DType.F16 => DTypes.F16ToF32(DTypes.F32ToF16(x)),
        _ => x,
    };
}

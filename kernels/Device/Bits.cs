// bf16 and f16 bit conversions: the one definition the CPU ops (through DTypes) and the kernels share, so both
// round alike. bf16 rounds to nearest even with NaN kept quiet (as torch does); f16 is IEEE binary16 (round to
// nearest even, subnormals kept, overflow to infinity), as System.Half. In CUDA kernels f16 uses the hardware cvt.
// Tested exhaustively against System.Half by tests/KernelBitsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace LlamaRun.Kernels.Device;

/// <summary>bfloat16 as raw ushort bits.</summary>
public static class Bf16
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToF32(ushort bits) => Interop.IntAsFloat((uint)bits << 16);

    /// <summary>Round-to-nearest-even f32 to bf16, NaN kept quiet.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromF32(float f)
    {
        uint u = Interop.FloatAsInt(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    /// <summary>f rounded to the nearest bf16 value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float f) => ToF32(FromF32(f));

    /// <summary>The low (element 2i) half of a packed pair as f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Lo(uint pair) => Interop.IntAsFloat(pair << 16);

    /// <summary>The high (element 2i+1) half of a packed pair as f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Hi(uint pair) => Interop.IntAsFloat(pair & 0xffff0000u);

    /// <summary>Two floats rounded to one bf16x2 word, lo in the low half (the mma operand layout); one cvt on CUDA.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Pack(float lo, float hi)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("cvt.rn.bf16x2.f32 %0, %1, %2;", out uint r, hi, lo);
            return r;
        }
        return FromF32(lo) | ((uint)FromF32(hi) << 16);
    }
}

/// <summary>IEEE half precision as raw ushort bits.</summary>
public static class F16
{
    /// <summary>Exact widening of f16 bits to f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToF32(ushort h)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.f32.f16 %0, t; }", out float f, (uint)h);
            return f;
        }
        uint sign = (uint)(h & 0x8000) << 16, exp = (uint)(h >> 10) & 0x1f, man = (uint)h & 0x3ff;
        if (exp == 0x1f) return Interop.IntAsFloat(sign | 0x7f800000u | (man << 13));   // inf, NaN (payload kept)
        if (exp != 0) return Interop.IntAsFloat(sign | ((exp + 112) << 23) | (man << 13));
        float v = man * 5.9604644775390625e-8f;   // zero or subnormal: man * 2^-24, exact in f32
        return sign != 0 ? -v : v;
    }

    /// <summary>Round-to-nearest-even f32 to f16 (subnormals kept, overflow to infinity, NaN kept quiet).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromF32(float f)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; cvt.u32.u16 %0, t; }", out uint r, f);
            return (ushort)r;
        }
        uint u = Interop.FloatAsInt(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
        if (a > 0x7f800000u) return (ushort)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));   // NaN
        if (a >= 0x477ff000u) return (ushort)(sign | 0x7c00u);                        // rounds to >= 65520: infinity
        if (a >= 0x38800000u)
        {
            // Normal f16: drop 13 mantissa bits with round to nearest even; a carry moves into the exponent.
            uint r = a - 0x38000000u;
            r += 0xfffu + ((r >> 13) & 1u);
            return (ushort)(sign | (r >> 13));
        }
        if (a < 0x33000000u) return (ushort)sign;                                     // below half the least subnormal
        // Subnormal f16: q * 2^-24 = m * 2^(e - 150), so q = m >> (126 - e), rounded to nearest even.
        uint e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        int shift = (int)(126 - e);                                                    // 14..24
        uint q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u) != 0)) q++;
        return (ushort)(sign | q);
    }

    /// <summary>f rounded to the nearest f16 value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float f) => ToF32(FromF32(f));
}

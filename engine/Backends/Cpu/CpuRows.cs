// Row readers shared by MatMul and Attention: F32, BF16 and F16 elements widened to f32, 8 at a time in natural order
// (Load8) or 16 at a time from one 32-byte load (Load16; 16-bit types give the even elements in the first vector and
// the odd ones in the second, "pair order", so the f32 operand is stored pair-split once by SplitPairs).
// Test: CpuRowsTests, CpuOpsTests.MatMul*, CpuKvCacheTests.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

/// <summary>Reads elements of one row of a weight matrix or KV cache as f32.</summary>
internal unsafe interface IRowReader
{
    /// <summary>Elements i..i+7 in natural order, exact.</summary>
    static abstract Vector256<float> Load8(void* row, nint i);

    static abstract float Load1(void* row, nint i);

    /// <summary>
    /// Elements i..i+15: natural order for F32, pair order for 16-bit types. F16 is exact for finite values only;
    /// it folds the raw bits into specials, whose top lane bits say whether an infinity or NaN was read.
    /// </summary>
    static abstract void Load16(void* row, nint i, out Vector256<float> even, out Vector256<float> odd, ref Vector256<ushort> specials);

    /// <summary>Whether Load16 returns pair order (the f32 operand must then be stored by SplitPairs).</summary>
    static abstract bool PairOrder { get; }
}

internal unsafe struct F32Row : IRowReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i) => Vector256.Load((float*)w + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => ((float*)w)[i];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* w, nint i, out Vector256<float> even, out Vector256<float> odd, ref Vector256<ushort> specials)
    {
        even = Vector256.Load((float*)w + i);
        odd = Vector256.Load((float*)w + i + 8);
    }

    public static bool PairOrder => false;
}

internal unsafe struct Bf16Row : IRowReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i)
    {
        if (Avx2.IsSupported)
            return Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)w + i), 16).AsSingle();
        var wide = Vector256.WidenLower(Vector128.Load((ushort*)w + i).ToVector256Unsafe());
        return Vector256.ShiftLeft(wide, 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => DTypes.BF16ToF32(((ushort*)w)[i]);

    // A bf16 is the top half of its f32: the low element of each int moves up 16 bits, the high one is masked.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* w, nint i, out Vector256<float> even, out Vector256<float> odd, ref Vector256<ushort> specials)
    {
        var p = Vector256.Load((int*)((ushort*)w + i));
        even = Vector256.ShiftLeft(p, 16).AsSingle();
        odd = (p & Vector256.Create(unchecked((int)0xFFFF0000))).AsSingle();
    }

    public static bool PairOrder => true;
}

// Load8 by integer bit moves (exact for normals, subnormals, zeros, infinities and NaNs): the exponent is rebiased by
// adding 112 << 23; infinities/NaNs get another 112 << 23; subnormals are renormalized by one exact f32 subtraction.
// Load16 is the fast path: sign and the 15 magnitude bits are placed as an f32 with the f16 exponent bias and scaled by
// 2^112, one exact multiply for every finite f16, subnormals included. An infinity or NaN would come out as a finite
// value of at least 65536, so Load16 also keeps the lane maximum of the magnitude bits for the caller to check.
internal unsafe struct F16Row : IRowReader
{
    /// <summary>A lane of Load16's specials at or above this held an infinity or NaN.</summary>
    public const ushort SpecialBits = 0x7c00;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* w, nint i)
    {
        var h = Avx2.IsSupported
            ? Avx2.ConvertToVector256Int32((ushort*)w + i)
            : Vector256.WidenLower(Vector128.Load((ushort*)w + i).ToVector256Unsafe()).AsInt32();
        return Exact(h);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(void* w, nint i) => DTypes.F16ToF32(((ushort*)w)[i]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* w, nint i, out Vector256<float> even, out Vector256<float> odd, ref Vector256<ushort> specials)
    {
        var p = Vector256.Load((int*)((ushort*)w + i));
        // Arithmetic shift right by 3 puts the 15 magnitude bits at 13..27 and copies the sign into 28..31; the mask
        // keeps the sign at 31 and the magnitude, clearing the copies and the other half's bits below 13.
        var mask = Vector256.Create(unchecked((int)0x8FFFE000));
        var scale = Vector256.Create(5.192296858534828e33f);   // 2^112
        even = (Vector256.ShiftRightArithmetic(Vector256.ShiftLeft(p, 16), 3) & mask).AsSingle() * scale;
        odd = (Vector256.ShiftRightArithmetic(p, 3) & mask).AsSingle() * scale;
        specials = Vector256.Max(specials, (p & Vector256.Create(0x7fff7fff)).AsUInt16());
    }

    /// <summary>Load16 with exact infinities and NaNs (the slow path of a row whose specials were set).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16Exact(void* w, nint i, out Vector256<float> even, out Vector256<float> odd)
    {
        var p = Vector256.Load((int*)((ushort*)w + i));
        even = Exact(p & Vector256.Create(0xffff));
        odd = Exact(Vector256.ShiftRightLogical(p, 16));
    }

    /// <summary>Whether any lane of a Load16 specials accumulator held an infinity or NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool AnySpecial(Vector256<ushort> specials) =>
        Vector256.GreaterThanOrEqualAny(specials, Vector256.Create(SpecialBits));

    public static bool PairOrder => true;

    // h: one f16 in the low 16 bits of each int lane.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Exact(Vector256<int> h)
    {
        var sign = Vector256.ShiftLeft(h & Vector256.Create(0x8000), 16);
        var o = Vector256.ShiftLeft(h & Vector256.Create(0x7fff), 13);
        var exp = o & Vector256.Create(0x0f800000);
        o += Vector256.Create(0x38000000);
        o += Vector256.Equals(exp, Vector256.Create(0x0f800000)) & Vector256.Create(0x38000000);
        var sub = (o + Vector256.Create(0x00800000)).AsSingle() - Vector256.Create(0x38800000).AsSingle();
        var f = Vector256.ConditionalSelect(Vector256.Equals(exp, Vector256<int>.Zero).AsSingle(), sub, o.AsSingle());
        return (f.AsInt32() | sign).AsSingle();
    }
}

/// <summary>F16 Load16 with exact infinities and NaNs, for the rows where F16Row's fast path saw one.</summary>
internal unsafe struct F16ExactRow : IRowReader
{
    public static Vector256<float> Load8(void* w, nint i) => F16Row.Load8(w, i);

    public static float Load1(void* w, nint i) => F16Row.Load1(w, i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* w, nint i, out Vector256<float> even, out Vector256<float> odd, ref Vector256<ushort> specials) =>
        F16Row.Load16Exact(w, i, out even, out odd);

    public static bool PairOrder => true;
}

public static unsafe partial class CpuOps
{
    // Within each block of 16, x[2k] goes to slot k and x[2k+1] to slot 8+k, matching the even and odd elements
    // Load16 returns for a 16-bit row; the tail past the last block is copied as is.
    internal static void SplitPairs(float* x, float* dst, int n)
    {
        int i = 0;
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < 8; k++)
            {
                dst[i + k] = x[i + 2 * k];
                dst[i + 8 + k] = x[i + 2 * k + 1];
            }
        for (; i < n; i++) dst[i] = x[i];
    }

    // The inverse of SplitPairs (x and dst must not overlap).
    internal static void MergePairs(float* x, float* dst, int n)
    {
        int i = 0;
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < 8; k++)
            {
                dst[i + 2 * k] = x[i + k];
                dst[i + 2 * k + 1] = x[i + 8 + k];
            }
        for (; i < n; i++) dst[i] = x[i];
    }
}

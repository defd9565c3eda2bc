// Warp and group reductions by butterfly shuffles (every lane gets the result), and the online-softmax merge rule.
// Group reductions need the group size to be a multiple of 32 and at most 1024 threads, and a 32-float shared scratch.
// Exercised through RmsNorm, Argmax and Attention by tests/GpuOpsTests.cs.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;

namespace LlamaRun.Kernels.Device;

public static class Reduce
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WarpSum(float v)
    {
        for (int o = 16; o > 0; o >>= 1) v += Warp.ShuffleXor(v, o);
        return v;
    }

    /// <summary>Sum over the four lanes of a quad (lanes that differ only in the two low bits of the lane index).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float QuadSum(float v)
    {
        v += Warp.ShuffleXor(v, 1);
        return v + Warp.ShuffleXor(v, 2);
    }

    /// <summary>Maximum over the four lanes of a quad.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float QuadMax(float v)
    {
        v = XMath.Max(v, Warp.ShuffleXor(v, 1));
        return XMath.Max(v, Warp.ShuffleXor(v, 2));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WarpMax(float v)
    {
        for (int o = 16; o > 0; o >>= 1) v = XMath.Max(v, Warp.ShuffleXor(v, o));
        return v;
    }

    /// <summary>Sum over the group, returned to every thread; scratch is 32 floats of shared memory.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GroupSum(float v, ArrayView<float> scratch)
    {
        v = WarpSum(v);
        Group.Barrier();                        // earlier readers of scratch are done
        if (Warp.LaneIdx == 0) scratch[Warp.WarpIdx] = v;
        Group.Barrier();
        v = Warp.LaneIdx < Group.DimX / Warp.WarpSize ? scratch[Warp.LaneIdx] : 0f;
        return WarpSum(v);
    }

    /// <summary>Maximum over the group (a NaN wins, as MaxNaN), returned to every thread; scratch is 32 floats of shared memory.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GroupMaxNaN(float v, ArrayView<float> scratch)
    {
        for (int o = 16; o > 0; o >>= 1) v = MaxNaN(v, Warp.ShuffleXor(v, o));
        Group.Barrier();                        // earlier readers of scratch are done
        if (Warp.LaneIdx == 0) scratch[Warp.WarpIdx] = v;
        Group.Barrier();
        v = Warp.LaneIdx < Group.DimX / Warp.WarpSize ? scratch[Warp.LaneIdx] : float.NegativeInfinity;
        for (int o = 16; o > 0; o >>= 1) v = MaxNaN(v, Warp.ShuffleXor(v, o));
        return v;
    }

    /// <summary>The larger of a and b where a NaN counts as larger than anything (so NaN scores propagate).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxNaN(float a, float b) => a > b || XMath.IsNaN(a) ? a : b;
}

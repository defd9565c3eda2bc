// A decoded token's residual add and the RMSNorm after it without a launch of their own (MatMulAddRmsNorm): the o/down
// GEMV adds its rows to the residual, writes them times the norm's weight to dst, and gathers their sum of squares in
// a slot of integer counters (kernels/Device/SquareSums.cs, the same bits in any order); the norm's scale stays
// deferred until the GEMV that reads dst (MatMulRope, MatMulSwiGlu) applies it to its sums. Any other op that touches
// dst first settles it (one small kernel scales it in place), and one that overwrites all of it drops it, so every op
// sees dst as the norm's output. A decoded token's embedding zeroes the slots and starts again at the first, so that
// a decode step's graph takes the same slots at every replay. Exercised by the matmul_add_rmsnorm op cases of
// tests/GpuOpsTests.cs and by every decode test on a GPU.
using ILGPU;
using ILGPU.Runtime;
using LlamaRun.Core;
using LlamaRun.Kernels;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Backends.Gpu;

public sealed unsafe partial class GpuBackend
{
    // Norm slots a forward pass may take before they are zeroed again (a decode step of a Llama takes 2 a layer, less one).
    private const int NormSlots = 512;

    private MemoryBuffer1D<ulong, Stride1D.Dense>? _normSums;   // NormSlots x SquareSums.Words counters (made with the backend)
    private int _nextNormSlot = NormSlots;                      // NormSlots: zero them all before the next one is taken
    private Deferred? _deferred;

    // dst of a MatMulAddRmsNorm whose scale is still to be applied: its norm's counters and parameters.
    private sealed record Deferred(Tensor Dst, ArrayView<ulong> Sums, DeferredNorm Norm);

    public void MatMulAddRmsNorm(Tensor x, Tensor weight, Tensor residual, Tensor normWeight, Tensor dst, float eps)
    {
        _accelerator.Bind();
        Require(x, DType.F32, nameof(x));
        Require(residual, DType.F32, nameof(residual));
        Require(normWeight, DType.F32, nameof(normWeight));
        Require(dst, DType.F32, nameof(dst));
        RequireOwn(weight, nameof(weight));
        if (weight.Cols != x.Cols) throw new ArgumentException($"weight {weight} does not match x {x}", nameof(weight));
        RequireShape(dst, x.Rows, weight.Rows, nameof(dst));
        RequireShape(residual, x.Rows, weight.Rows, nameof(residual));
        RequireShape(normWeight, 1, weight.Rows, nameof(normWeight));
        if (x.Rows != 1 || !GpuKernels.GemvBf16Fits(x, weight) || !GpuViews.Aligned16(residual, normWeight, dst)
            || Overlap(x, dst) || Overlap(x, residual) || Overlap(residual, dst))
        {
            MatMul(x, weight, dst);
            AddRmsNorm(residual, dst, normWeight, dst, eps);
            return;
        }
        Reads(x);
        Reads(residual);
        Reads(normWeight);
        Overwrites(dst);
        var sums = TakeNormSlot();
        _launch.GemvAddNorm(x, weight, residual, normWeight, dst, sums);
        _deferred = new Deferred(dst, sums, new DeferredNorm(1, weight.Rows, eps));
    }

    // The counters of the next norm slot (all slots zeroed first when they have run out).
    private ArrayView<ulong> TakeNormSlot()
    {
        if (_nextNormSlot == NormSlots) ResetNormSlots();
        return _normSums!.View.SubView((long)_nextNormSlot++ * SquareSums.Words, SquareSums.Words);
    }

    // Settles what is deferred, zeroes every slot and starts again at the first (a decoded token's embedding, where
    // the forward pass takes MatMulAddRmsNorm: Capabilities.FusedNorm).
    private void ResetNormSlots()
    {
        Settle();
        _launch.Zero(_normSums!.View);
        _nextNormSlot = 0;
    }

    // The deferred norm that x is the input of, for the GEMVs that apply it (else settled, and off).
    private (ArrayView<ulong> Sums, DeferredNorm Norm) DeferredInput(Tensor x)
    {
        if (_deferred is { } d && GpuViews.Address(d.Dst) == GpuViews.Address(x) && d.Dst.ByteLength == x.ByteLength) return (d.Sums, d.Norm);
        Reads(x);
        return (NoNorm, default);
    }

    // Counters a GEMV with no deferred norm is handed (not read).
    private ArrayView<ulong> NoNorm => _normSums!.View.SubView(0, SquareSums.Words);

    /// <summary>An op reads (or updates) t: a deferred norm in it is settled first.</summary>
    private void Reads(Tensor t)
    {
        if (_deferred is { } d && Overlap(d.Dst, t)) Settle();
    }

    /// <summary>An op writes t without reading it: a deferred norm wholly inside t is dropped, one partly inside settled.</summary>
    private void Overwrites(Tensor t)
    {
        if (_deferred is not { } d || !Overlap(d.Dst, t)) return;
        ulong a = GpuViews.Address(t), b = GpuViews.Address(d.Dst);
        if (b >= a && b + (ulong)d.Dst.ByteLength <= a + (ulong)t.ByteLength) _deferred = null;
        else Settle();
    }

    // Applies the deferred scale to its tensor.
    private void Settle()
    {
        if (_deferred is not { } d) return;
        _deferred = null;
        _launch.ScaleDeferred(d.Dst, d.Sums, d.Norm);
    }

    private static bool Overlap(Tensor a, Tensor b)
    {
        if (!a.OnAccelerator || !b.OnAccelerator || a.ByteLength == 0 || b.ByteLength == 0) return false;
        ulong x = GpuViews.Address(a), y = GpuViews.Address(b);
        return x < y + (ulong)b.ByteLength && y < x + (ulong)a.ByteLength;
    }
}

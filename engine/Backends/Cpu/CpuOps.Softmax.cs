// CPU softmax (max-subtracted, never TensorPrimitives.SoftMax, which does not subtract the max) and argmax.
// Numerics: exp in f32 of (x - max), the normalizing sum in double. NaN: a row holding a NaN softmaxes to all NaN,
// and Argmax returns the index of its first NaN: the one argmax rule of llama-run (kernels/Argmax.cs ArgmaxRule, which
// the GPU kernel follows; NaN ranks above everything, as torch.argmax). Test: CpuOpsTests.
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    /// <summary>dst = exp(x - max(x)) / sum(exp(x - max(x))); dst may alias x; empty input does nothing.</summary>
    public static void Softmax(ReadOnlySpan<float> x, Span<float> dst)
    {
        if (x.Length == 0) return;
        if (dst.Length < x.Length) throw new ArgumentException($"dst has {dst.Length} elements, x has {x.Length}", nameof(dst));
        dst = dst[..x.Length];
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, dst);
        TensorPrimitives.Exp(dst, dst);
        double sum = 0;
        foreach (float e in dst) sum += e;
        TensorPrimitives.Multiply(dst, (float)(1.0 / sum), dst);
    }

    /// <summary>Index of the largest element of x, the first one on ties, the first NaN if any; -1 for empty x.</summary>
    public static int Argmax(ReadOnlySpan<float> x)
    {
        if (x.Length == 0) return -1;
        fixed (float* p = x)
        {
            int n = x.Length, i = 0;
            // Pass 1: the maximum (NaN propagates); pass 2: its first position (IEEE equality, so -0 ties +0).
            float max = TensorPrimitives.Max(x);
            if (float.IsNaN(max))
            {
                for (; i < n; i++) if (float.IsNaN(p[i])) return i;
            }
            var m = Vector256.Create(max);
            for (; i <= n - 8; i += 8)
            {
                uint bits = Vector256.Equals(Vector256.Load(p + i), m).ExtractMostSignificantBits();
                if (bits != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(bits);
            }
            for (; i < n; i++) if (p[i] == max) return i;
            return -1;
        }
    }
}

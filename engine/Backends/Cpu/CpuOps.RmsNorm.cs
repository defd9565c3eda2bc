// CPU RMSNorm, as transformers' LlamaRMSNorm in f32: dst = weight * (x * rsqrt(mean(x^2) + eps)).
// Numerics: the sum of squares is accumulated in double (so it does not depend on vector width or order),
// rounded to f32 as the mean; rsqrt is computed in double and rounded. A bf16/f16 compute type rounds twice as
// LlamaRMSNorm does in that dtype: x * rsqrt(...) is cast to it, then multiplied by the weight and cast again.
// Test: CpuOpsTests.RmsNorm, CpuOpsBf16Tests.RmsNorm.
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    /// <summary>Normalizes each of the rows of x [rows, n] by its root mean square and scales by weight [n]; dst may alias x.</summary>
    public static void RmsNorm(float* x, float* weight, float* dst, int rows, int n, float eps, DType compute = DType.F32)
    {
        if (rows <= 0 || n <= 0) return;
        nint xp = (nint)x, wp = (nint)weight, dp = (nint)dst;
        void Row(int r)
        {
            var xs = new ReadOnlySpan<float>((float*)xp + (nint)r * n, n);
            var ds = new Span<float>((float*)dp + (nint)r * n, n);
            float mean = (float)(SumOfSquares(xs) / n);
            float inv = (float)(1.0 / Math.Sqrt(mean + eps));
            TensorPrimitives.Multiply(xs, inv, ds);
            Round(ds, compute);
            TensorPrimitives.Multiply(ds, new ReadOnlySpan<float>((float*)wp, n), ds);
            Round(ds, compute);
        }
        if ((long)rows * n < 65536)
        {
            for (int r = 0; r < rows; r++) Row(r);
        }
        else
        {
            CpuParallel.For(rows, Row);
        }
    }

    internal static double SumOfSquares(ReadOnlySpan<float> x)
    {
        fixed (float* p = x)
        {
            var a0 = Vector256<double>.Zero;
            var a1 = Vector256<double>.Zero;
            int i = 0, n = x.Length;
            for (; i <= n - 8; i += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(p + i));
                a0 = Vector256.MultiplyAddEstimate(lo, lo, a0);
                a1 = Vector256.MultiplyAddEstimate(hi, hi, a1);
            }
            double s = Vector256.Sum(a0 + a1);
            for (; i < n; i++) s += (double)p[i] * p[i];
            return s;
        }
    }
}

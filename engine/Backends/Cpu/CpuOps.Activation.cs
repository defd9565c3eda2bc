// CPU element-wise activations: SwiGlu dst = silu(gate) * up with silu(x) = x / (1 + exp(-x)) (transformers' form),
// and Add dst = x + y. Both allow dst to alias an input. A bf16/f16 compute type rounds silu(gate) and the product, as
// torch's silu and mul do in that dtype. Test: CpuOpsTests.SwiGlu, CpuOpsTests.Add, CpuOpsBf16Tests.SwiGlu.
using System.Numerics.Tensors;
using LlamaRun.Core;

namespace LlamaRun.Backends.Cpu;

public static unsafe partial class CpuOps
{
    private const int ElementChunk = 4096;

    /// <summary>dst[i] = gate[i] / (1 + exp(-gate[i])) * up[i]; dst may alias gate or up.</summary>
    public static void SwiGlu(float* gate, float* up, float* dst, long n, DType compute = DType.F32)
    {
        nint gp = (nint)gate, up_ = (nint)up, dp = (nint)dst;
        void Chunk(int c)
        {
            long start = (long)c * ElementChunk;
            int len = (int)Math.Min(ElementChunk, n - start);
            Span<float> tmp = stackalloc float[len];
            var g = new ReadOnlySpan<float>((float*)gp + start, len);
            TensorPrimitives.Negate(g, tmp);
            TensorPrimitives.Exp(tmp, tmp);
            TensorPrimitives.Add(tmp, 1f, tmp);
            TensorPrimitives.Divide(g, tmp, tmp);
            Round(tmp, compute);
            var d = new Span<float>((float*)dp + start, len);
            TensorPrimitives.Multiply(tmp, new ReadOnlySpan<float>((float*)up_ + start, len), d);
            Round(d, compute);
        }
        RunChunks(n, Chunk);
    }

    /// <summary>dst[i] = x[i] + y[i]; dst may alias x or y.</summary>
    public static void Add(float* x, float* y, float* dst, long n)
    {
        nint xp = (nint)x, yp = (nint)y, dp = (nint)dst;
        void Chunk(int c)
        {
            long start = (long)c * ElementChunk;
            int len = (int)Math.Min(ElementChunk, n - start);
            TensorPrimitives.Add(new ReadOnlySpan<float>((float*)xp + start, len), new ReadOnlySpan<float>((float*)yp + start, len),
                new Span<float>((float*)dp + start, len));
        }
        RunChunks(n, Chunk);
    }

    // Element-wise work below ~64K elements is cheaper on the calling thread than a pool wake-up.
    private static void RunChunks(long n, Action<int> chunk)
    {
        if (n <= 0) return;
        int chunks = checked((int)((n + ElementChunk - 1) / ElementChunk));
        if (n < 65536)
        {
            for (int c = 0; c < chunks; c++) chunk(c);
        }
        else
        {
            CpuParallel.For(chunks, chunk);
        }
    }
}

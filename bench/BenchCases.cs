// The shapes the op benchmarks run: the OpCheck case table (real Llama shapes and awkward ones), plus decode shapes
// of stories110M and Llama-2-7B. Each case knows the bytes it moves and the FLOPs it does, for the GB/s and TFLOP/s columns.
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Model;

namespace LlamaRun.Bench;

/// <summary>One benchmarked op at one shape, with the minimum bytes it must move and the FLOPs it performs.</summary>
public sealed record BenchCase(OpCase Op, int KvElementSize)
{
    /// <summary>Bytes read plus bytes written, counting every input and output once (weights at their dtype, activations F32).</summary>
    public long Bytes
    {
        get
        {
            var c = Op;
            long w = c.Weight.Size(), kvDim = (long)c.KvHeads * c.HeadDim, qDim = (long)c.Heads * c.HeadDim;
            return c.Op switch
            {
                OpKind.Embedding => (long)c.T * c.N * (w + 4),
                OpKind.RmsNorm => (long)c.T * c.N * 8 + c.N * 4L,
                OpKind.MatMul => (long)c.Out * c.N * w + (long)c.T * (c.N + c.Out) * 4,
                OpKind.Rope => c.T * (qDim * 8 + kvDim * 12 + kvDim * 2 * KvElementSize),
                OpKind.Attention => (long)(c.StartPos + c.T) * kvDim * 2 * KvElementSize + c.T * qDim * 8,
                OpKind.Rerotate => (long)c.T * kvDim * 2 * KvElementSize,
                OpKind.SwiGlu or OpKind.Add => (long)c.T * c.N * 12,
                _ => (long)c.T * c.N * 4,
            };
        }
    }

    /// <summary>Floating-point operations: 2 per multiply-add for MatMul and attention (causal: only visible positions).</summary>
    public double Flops => Op.Op switch
    {
        OpKind.MatMul => 2.0 * Op.T * Op.N * Op.Out,
        OpKind.Attention => 4.0 * Op.Heads * Op.HeadDim * (Op.T * (double)Op.StartPos + Op.T * (Op.T + 1) / 2.0),
        _ => 0,
    };

    public override string ToString() => Op.Name.Replace(" (", " [").Replace(")", "]");
}

/// <summary>Case lists for the CPU op benchmarks and the GPU kernel benchmarks.</summary>
public static class BenchCases
{
    // Decode shapes of the models the generation benchmarks run, besides those of the check table.
    private static IEnumerable<OpCase> Extra()
    {
        foreach (var (n, o, src) in new[] { (768, 768, "stories110M qkvo"), (768, 2048, "stories110M gate/up"), (2048, 768, "stories110M down"),
                     (768, 32000, "stories110M lm_head"), (4096, 11008, "Llama-2-7B gate/up"), (4096, 32000, "Llama-2-7B lm_head") })
            yield return new OpCase(OpKind.MatMul, src + " decode", 0) { Weight = DType.BF16, T = 1, N = n, Out = o };
        yield return new OpCase(OpKind.Attention, "stories110M decode at 512", 0) { T = 1, Heads = 12, KvHeads = 12, HeadDim = 64, StartPos = 511 };
    }

    /// <summary>Every case of the check table without NaN injection, plus the decode shapes above.</summary>
    public static IEnumerable<OpCase> Table() => OpCheckCases.All.Where(c => !c.Specials).Concat(Extra());

    /// <summary>CPU cases: the table minus those too slow for a 2-core machine (long prefill attention, 4k rerotation).</summary>
    public static IEnumerable<BenchCase> Cpu() => Table()
        .Where(c => !(c.Op is OpKind.Attention or OpKind.Rerotate && c.T * (long)(c.StartPos + c.T) > 1 << 20))
        .Where(c => !(c.Op == OpKind.MatMul && (long)c.T * c.N * c.Out > 1L << 30))
        .Select(c => new BenchCase(c, 4));

    /// <summary>GPU kernel cases: RMSNorm, rotary, decode GEMV and the long causal attention prefills (4k and 16k).</summary>
    public static IEnumerable<BenchCase> Kernels(int kvElementSize)
    {
        var picked = Table().Where(c => c.Op is OpKind.RmsNorm or OpKind.Rope || (c.Op == OpKind.MatMul && c.T == 1));
        var prefill = new[] { 4096, 16384 }.SelectMany(t => new[]
        {
            new OpCase(OpKind.Attention, "Llama-2-7B causal prefill", 0) { T = t, Heads = 32, KvHeads = 32, HeadDim = 128 },
            new OpCase(OpKind.Attention, "Llama-3-8B causal prefill", 0) { T = t, Heads = 32, KvHeads = 8, HeadDim = 128, Theta = 500000f },
        });
        return picked.Concat(prefill).Select(c => new BenchCase(c, kvElementSize));
    }
}

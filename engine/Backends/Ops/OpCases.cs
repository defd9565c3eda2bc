// The op case table shared by GpuOpsTests, `llama-run check` and the benchmarks: one line per case with op, shape,
// tolerance (NMSE bound) and the model the shape comes from; plus the shapes the kernel and CPU benchmarks time.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

/// <summary>The case table: real Llama shapes and awkward ones (1, 31, 33, 127, 1025).</summary>
public static class OpCases
{
    // f32 math differs only in summation order (~1e-14). Prefill matmul over bf16 weights rounds activations to bf16
    // for the tensor cores, and the CUDA KV cache is bf16: both give NMSE near 2e-6, so those bounds are 10x that.
    private const double F32 = 1e-9, Bf16Act = 2e-5, Bf16Cache = 3e-5;

    public static IReadOnlyList<OpCase> All { get; } = Build();

    private static List<OpCase> Build()
    {
        var c = new List<OpCase>();
        foreach (var dt in new[] { DType.F32, DType.F16, DType.BF16 })
        {
            c.Add(new EmbeddingCase("Llama-2-7B", F32) { Weight = dt, Vocab = 32000, Hidden = 4096, T = 7 });
            c.Add(new EmbeddingCase("awkward", F32) { Weight = dt, Vocab = 33, Hidden = 127, T = 1 });
        }
        c.Add(new RmsNormCase("Llama-2-7B decode", 1e-10) { T = 1, N = 4096 });
        c.Add(new RmsNormCase("Llama-2-7B prefill", 1e-10) { T = 64, N = 4096 });
        c.Add(new RmsNormCase("Llama-3-70B", 1e-10) { T = 3, N = 8192 });
        foreach (int n in new[] { 1, 31, 33, 127, 1025 }) c.Add(new RmsNormCase("awkward", 1e-10) { T = 2, N = n });
        c.Add(new RmsNormCase("awkward", 1e-10) { T = 3, N = 33, Specials = true });
        c.Add(new AddRmsNormCase("Llama-2-7B decode", 1e-10) { T = 1, N = 4096 });
        c.Add(new AddRmsNormCase("Llama-2-7B prefill", 1e-10) { T = 64, N = 4096 });
        c.Add(new AddRmsNormCase("awkward", 1e-10) { T = 2, N = 1025 });
        c.Add(new AddRmsNormCase("awkward", 1e-10) { T = 3, N = 33, Specials = true });
        // Rows of at most one 16-byte vector a thread of the group (ILGPU's CPU accelerator: 256 threads): the one-step path.
        c.Add(new RmsNormCase("one vector a thread", 1e-10) { T = 3, N = 1000 });
        c.Add(new AddRmsNormCase("one vector a thread", 1e-10) { T = 3, N = 1000 });
        c.Add(new AddRmsNormCase("one vector a thread", 1e-6) { T = 2, N = 1000, Compute = DType.BF16 });

        foreach (var dt in new[] { DType.BF16, DType.F16, DType.F32 })
        {
            c.Add(new MatMulCase("Llama-2-7B q_proj decode", F32) { Weight = dt, T = 1, N = 4096, Out = 4096 });
            c.Add(new MatMulCase("awkward", F32) { Weight = dt, T = 3, N = 33, Out = 31 });
            c.Add(new MatMulCase("awkward", F32) { Weight = dt, T = 5, N = 1025, Out = 127 });
            c.Add(new MatMulCase("awkward", dt == DType.BF16 ? Bf16Act : F32) { Weight = dt, T = 13, N = 31, Out = 1 });
        }
        c.Add(new MatMulCase("Llama-2-7B down_proj decode", F32) { Weight = DType.BF16, T = 1, N = 11008, Out = 4096 });
        c.Add(new MatMulCase("tiny lm_head", F32) { Weight = DType.BF16, T = 8, N = 64, Out = 32000 });
        c.Add(new MatMulCase("Llama-2-7B q_proj prefill", Bf16Act) { Weight = DType.BF16, T = 512, N = 4096, Out = 4096 });
        c.Add(new MatMulCase("Llama-2-7B up_proj prefill", Bf16Act) { Weight = DType.BF16, T = 130, N = 4096, Out = 11008 });
        c.Add(new MatMulCase("awkward", Bf16Act) { Weight = DType.BF16, T = 33, N = 1025, Out = 127 });
        c.Add(new MatMulCase("awkward", Bf16Act) { Weight = DType.BF16, T = 127, N = 31, Out = 33 });
        c.Add(new MatMulCase("awkward", Bf16Act) { Weight = DType.BF16, T = 9, N = 64, Out = 1 });
        c.Add(new MatMulCase("awkward", F32) { Weight = DType.BF16, T = 2, N = 33, Out = 5, Specials = true });
        // Rows past one block of sixteen loads a lane (512 chunks of 8): the predicated last block of the decode GEMV.
        c.Add(new MatMulCase("long rows", F32) { Weight = DType.BF16, T = 1, N = 4104, Out = 24 });
        c.Add(new MatMulCase("long rows", F32) { Weight = DType.BF16, T = 1, N = 9000, Out = 9 });
        // The fused gate/up GEMV with its SwiGlu epilogue (bf16, one token), and the product-then-SwiGlu path of the rest.
        c.Add(new MatMulSwiGluCase("Llama-2-7B gate/up decode", F32) { T = 1, N = 4096, Ff = 11008 });
        c.Add(new MatMulSwiGluCase("small", F32) { T = 1, N = 64, Ff = 96 });
        c.Add(new MatMulSwiGluCase("awkward", F32) { T = 1, N = 72, Ff = 13 });
        c.Add(new MatMulSwiGluCase("awkward", F32) { T = 3, N = 40, Ff = 7 });
        c.Add(new MatMulSwiGluCase("awkward", F32) { Weight = DType.F32, T = 1, N = 33, Ff = 9 });
        c.Add(new MatMulSwiGluCase("awkward", F32) { T = 1, N = 64, Ff = 5, Specials = true });

        // The o/down projections with the residual add and the next norm (a GPU defers its scale to the reader).
        c.Add(new MatMulAddRmsNormCase("Llama-2-7B o_proj decode, gate/up next", F32) { N = 4096, Out = 4096, Then = NormReader.SwiGlu, Ff = 11008 });
        c.Add(new MatMulAddRmsNormCase("Llama-2-7B down_proj decode, q/k/v next", Bf16Cache) { N = 11008, Out = 4096, Then = NormReader.Rope, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 17 });
        c.Add(new MatMulAddRmsNormCase("small, swiglu next", F32) { N = 72, Out = 96, Then = NormReader.SwiGlu, Ff = 40 });
        c.Add(new MatMulAddRmsNormCase("small, rope next", Bf16Cache) { N = 40, Out = 64, Then = NormReader.Rope, Heads = 4, KvHeads = 2, HeadDim = 16, StartPos = 5 });
        c.Add(new MatMulAddRmsNormCase("small, read back alone", F32) { N = 64, Out = 72 });
        c.Add(new MatMulAddRmsNormCase("small, plain matmul next", F32) { N = 64, Out = 72, Then = NormReader.MatMul, Ff = 24 });
        c.Add(new MatMulAddRmsNormCase("small, add next", F32) { N = 64, Out = 72, Then = NormReader.Add });
        c.Add(new MatMulAddRmsNormCase("long rows, read back alone", F32) { N = 4104, Out = 24 });
        c.Add(new MatMulAddRmsNormCase("awkward", F32) { N = 33, Out = 31, Then = NormReader.SwiGlu, Ff = 5 });
        c.Add(new MatMulAddRmsNormCase("awkward", F32) { N = 64, Out = 40, Then = NormReader.SwiGlu, Ff = 9, Specials = true });

        // The fused q/k/v projection with the rotary op: the one-token GEMV (whole heads rotary, bf16 cache) and the
        // projection-then-Rope path every other shape takes.
        c.Add(new MatMulRopeCase("Llama-2-7B decode", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, N = 4096, StartPos = 17 });
        c.Add(new MatMulRopeCase("Llama-3-8B decode at 16k", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, N = 4096, StartPos = 16381, Theta = 500000f });
        c.Add(new MatMulRopeCase("small, magnitude + query scale", Bf16Cache) { T = 1, Heads = 4, KvHeads = 2, HeadDim = 32, N = 64, StartPos = 5000, Magnitude = 1.13f, QueryScale = true });
        c.Add(new MatMulRopeCase("small MQA", Bf16Cache) { T = 1, Heads = 3, KvHeads = 1, HeadDim = 16, N = 40, StartPos = 3 });
        c.Add(new MatMulRopeCase("partial rotary", Bf16Cache) { T = 1, Heads = 3, KvHeads = 1, HeadDim = 64, RotaryDim = 32, N = 48, StartPos = 9 });
        c.Add(new MatMulRopeCase("three tokens", Bf16Cache) { T = 3, Heads = 2, KvHeads = 1, HeadDim = 32, N = 64, StartPos = 7 });
        c.Add(new MatMulRopeCase("f32 cache", F32) { T = 1, Heads = 4, KvHeads = 2, HeadDim = 32, N = 64, StartPos = 11, FullPrecision = true });
        c.Add(new RopeCase("Llama-2-7B decode", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 17 });
        c.Add(new RopeCase("Llama-3-8B prefill", Bf16Cache) { T = 64, Heads = 32, KvHeads = 8, HeadDim = 128, Theta = 500000f });
        c.Add(new RopeCase("Llama-3-8B at 16k", Bf16Cache) { T = 3, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16381, Theta = 500000f });
        c.Add(new RopeCase("YaRN magnitude + query scale", Bf16Cache) { T = 5, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 5000, Magnitude = 1.13f, QueryScale = true });
        c.Add(new RopeCase("partial rotary", Bf16Cache) { T = 31, Heads = 3, KvHeads = 1, HeadDim = 64, RotaryDim = 32, StartPos = 2 });

        c.Add(new AttentionCase("Llama-2-7B decode", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 0 });
        c.Add(new AttentionCase("Llama-2-7B decode at 1k", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 1000 });
        c.Add(new AttentionCase("Llama-2-7B decode at 16k", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 16383 });
        c.Add(new AttentionCase("decode over two splits, one query head a KV head", Bf16Cache) { T = 1, Heads = 2, KvHeads = 2, HeadDim = 64, StartPos = 600 });
        c.Add(new AttentionCase("decode, one query head a KV head, head dim 128", Bf16Cache) { T = 1, Heads = 2, KvHeads = 2, HeadDim = 128, StartPos = 500 });
        c.Add(new AttentionCase("Llama-3-8B decode", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 1024 });
        c.Add(new AttentionCase("Llama-3-8B decode at 16k", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16383, Theta = 500000f });
        c.Add(new AttentionCase("Llama-3-8B prefill", Bf16Cache) { T = 256, Heads = 32, KvHeads = 8, HeadDim = 128 });
        c.Add(new AttentionCase("Llama-3-8B chunked prefill", Bf16Cache) { T = 100, Heads = 8, KvHeads = 2, HeadDim = 128, StartPos = 1000 });
        c.Add(new AttentionCase("tiny fixture chunked prefill", Bf16Cache) { T = 33, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 31 });
        c.Add(new AttentionCase("awkward", Bf16Cache) { T = 127, Heads = 6, KvHeads = 3, HeadDim = 64, StartPos = 1 });
        c.Add(new AttentionCase("group of 16, untiled kernel", Bf16Cache) { T = 3, Heads = 16, KvHeads = 1, HeadDim = 64, StartPos = 200 });
        c.Add(new AttentionCase("head dim 256, untiled kernel", Bf16Cache) { T = 2, Heads = 2, KvHeads = 1, HeadDim = 256, StartPos = 70 });
        c.Add(new AttentionCase("decode over three splits", Bf16Cache) { T = 1, Heads = 2, KvHeads = 1, HeadDim = 64, StartPos = 600 });
        c.Add(new AttentionCase("query scale", Bf16Cache) { T = 4, Heads = 4, KvHeads = 1, HeadDim = 32, StartPos = 1025, QueryScale = true });

        c.Add(new RerotateCase("dynamic NTK switch", Bf16Cache) { T = 100, Heads = 8, KvHeads = 8, HeadDim = 64 });
        // Small enough for ILGPU's CPU accelerator (tests/GpuOpsTests.cs): flash prefill, rope prefill, rerotate.
        c.Add(new AttentionCase("small prefill, flash", Bf16Cache) { T = 33, Heads = 2, KvHeads = 1, HeadDim = 64 });
        c.Add(new RopeCase("small prefill", Bf16Cache) { T = 9, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 3 });
        // Pairs not a multiple of four: the kernel's one-pair-a-thread path (the others take four at once).
        c.Add(new RopeCase("partial rotary, pairs not in fours", Bf16Cache) { T = 7, Heads = 3, KvHeads = 1, HeadDim = 40, RotaryDim = 12, StartPos = 5, QueryScale = true });
        c.Add(new RerotateCase("small", Bf16Cache) { T = 24, Heads = 2, KvHeads = 2, HeadDim = 64 });
        c.Add(new RerotateCase("Llama-3-8B long", Bf16Cache) { T = 4100, Heads = 32, KvHeads = 8, HeadDim = 128, Theta = 500000f });
        AddRemaps(c);

        foreach (int n in new[] { 1, 31, 33, 127, 1025, 11008 * 4 })
        {
            c.Add(new SwiGluCase(n == 11008 * 4 ? "Llama-2-7B FFN x4" : "awkward", 1e-10) { N = n });
            c.Add(new AddCase(n == 11008 * 4 ? "Llama-2-7B FFN x4" : "awkward", 1e-12) { N = n });
        }
        c.Add(new AddCase("awkward", 1e-12) { N = 33, Specials = true });

        c.Add(new ArgmaxCase("Llama-2-7B logits", 0) { T = 1, N = 32000 });
        c.Add(new ArgmaxCase("Llama-3-8B logits, prefill rows", 0) { T = 4, N = 128256 });
        foreach (int n in new[] { 1, 31, 33, 1025 }) c.Add(new ArgmaxCase("awkward, ties", 0) { T = 3, N = n });
        c.Add(new ArgmaxCase("awkward", 0) { T = 2, N = 127, Specials = true });
        AddBf16Compute(c);
        AddFullPrecision(c);
        return c;
    }

    // Index remaps: Self-Extend, DPE (a group size per group of pairs), ReRoPE and Leaky ReRoPE (exact division), in
    // prefill (split-K with the far branch) and decode at depth; the small ones also run on ILGPU's CPU accelerator.
    private static void AddRemaps(List<OpCase> c)
    {
        static RopeRemap Uniform(string kind, int pairs, int w, float g, bool floor = true) => new(kind, w, Enumerable.Repeat(g, pairs).ToArray(), floor);
        static RopeRemap Dpe(int pairs, int w, params float[] groups) =>
            new("dpe", w, Enumerable.Range(0, pairs).Select(j => groups[j * groups.Length / pairs]).ToArray());
        // DPE's key dims: a different top-k of pairs per layer and KV head takes the grouped positions.
        static RopeRemap KeyDims(RopeRemap r, int kvHeads, int seed)
        {
            var rng = new Random(seed);
            int pairs = r.Group.Length, k = pairs * 3 / 4;
            var selected = new bool[2 * kvHeads * pairs];
            for (int row = 0; row < 2 * kvHeads; row++)
                foreach (int j in Enumerable.Range(0, pairs).OrderBy(_ => rng.Next()).Take(k)) selected[row * pairs + j] = true;
            return r.WithKeyDims(new RopeKeyDims(2, kvHeads, pairs, selected));
        }
        c.Add(new RopeCase("small prefill, dpe key dims", Bf16Cache) { T = 9, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 30, Remap = KeyDims(Dpe(32, 16, 1, 4, 8, 32), 2, 1) });
        c.Add(new RopeCase("Llama-3-8B prefill, dpe key dims", Bf16Cache) { T = 200, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 3000, Theta = 500000f, Remap = KeyDims(Dpe(64, 1024, 4, 4, 2, 16, 32, 32, 16, 128), 8, 2) });
        c.Add(new AttentionCase("small decode, dpe key dims", Bf16Cache) { T = 1, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 70, Remap = KeyDims(Dpe(32, 16, 1, 4, 8, 32), 2, 3) });
        c.Add(new AttentionCase("Llama-3-8B decode at 16k, dpe key dims", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16383, Theta = 500000f, Remap = KeyDims(Dpe(64, 1024, 4, 4, 2, 16, 32, 32, 16, 128), 8, 4) });
        // The two-pass kernels (flash attention for 32 queries or more, the decode kernel for fewer): a window that
        // crosses key tiles, a chunk after cached positions, a window longer than the context (no far keys).
        c.Add(new AttentionCase("small prefill, selfextend, flash", Bf16Cache) { T = 33, Heads = 2, KvHeads = 1, HeadDim = 64, Remap = Uniform("selfextend", 32, 8, 4) });
        c.Add(new AttentionCase("small prefill, leaky rerope, flash hd128", Bf16Cache) { T = 32, Heads = 1, KvHeads = 1, HeadDim = 128, QueryScale = true, Remap = Uniform("leaky-rerope", 64, 12, 2.5f, floor: false) });
        c.Add(new AttentionCase("small chunk, dpe, flash", Bf16Cache) { T = 32, Heads = 1, KvHeads = 1, HeadDim = 64, StartPos = 40, Remap = Dpe(32, 16, 1, 4, 8, 32) });
        c.Add(new AttentionCase("small chunk, selfextend, decode kernel", Bf16Cache) { T = 4, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 50, Remap = Uniform("selfextend", 32, 8, 3) });
        c.Add(new AttentionCase("decode inside the window", Bf16Cache) { T = 1, Heads = 2, KvHeads = 1, HeadDim = 64, StartPos = 10, Remap = Uniform("selfextend", 32, 16, 4) });
        c.Add(new AttentionCase("decode, one query head a KV head, selfextend", Bf16Cache) { T = 1, Heads = 2, KvHeads = 2, HeadDim = 64, StartPos = 400, Remap = Uniform("selfextend", 32, 64, 4) });
        c.Add(new RopeCase("small prefill, selfextend", Bf16Cache) { T = 9, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 3, Remap = Uniform("selfextend", 32, 4, 3) });
        c.Add(new RopeCase("dpe at 16k", Bf16Cache) { T = 2, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16382, Theta = 500000f, Remap = Dpe(64, 1024, 4, 4, 2, 16, 32, 32, 16, 128) });
        c.Add(new RopeCase("leaky rerope + query scale, partial rotary", Bf16Cache) { T = 5, Heads = 3, KvHeads = 1, HeadDim = 64, RotaryDim = 32, StartPos = 70, QueryScale = true, Remap = Uniform("leaky-rerope", 16, 24, 2.5f, floor: false) });
        c.Add(new RopeCase("selfextend, pairs not in fours", Bf16Cache) { T = 5, Heads = 2, KvHeads = 1, HeadDim = 40, RotaryDim = 12, StartPos = 70, Remap = Uniform("selfextend", 6, 24, 3) });
        c.Add(new AttentionCase("small prefill, selfextend", Bf16Cache) { T = 24, Heads = 2, KvHeads = 1, HeadDim = 64, Remap = Uniform("selfextend", 32, 8, 4) });
        c.Add(new AttentionCase("small decode, dpe", Bf16Cache) { T = 1, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 70, Remap = Dpe(32, 16, 1, 4, 8, 32) });
        c.Add(new AttentionCase("small chunk, rerope", Bf16Cache) { T = 6, Heads = 2, KvHeads = 2, HeadDim = 32, StartPos = 40, QueryScale = true, Remap = Uniform("rerope", 16, 12, float.PositiveInfinity) });
        c.Add(new AttentionCase("Llama-2-7B prefill, selfextend", Bf16Cache) { T = 512, Heads = 32, KvHeads = 32, HeadDim = 128, Remap = Uniform("selfextend", 64, 128, 8) });
        c.Add(new AttentionCase("Llama-3-8B decode at 16k, dpe", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16383, Theta = 500000f, Remap = Dpe(64, 1024, 4, 4, 2, 16, 32, 32, 16, 128) });
        c.Add(new AttentionCase("Llama-3-8B chunked prefill, selfextend", F32) { T = 100, Heads = 8, KvHeads = 2, HeadDim = 128, StartPos = 1000, Remap = Uniform("selfextend", 64, 256, 16), FullPrecision = true });
        c.Add(new AttentionCase("long prefill, selfextend", F32) { T = 4096, Heads = 8, KvHeads = 2, HeadDim = 64, Remap = Uniform("selfextend", 32, 512, 8), FullPrecision = true });
        c.Add(new RopeCase("dpe at 16k", F32) { T = 2, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16382, Theta = 500000f, Remap = Dpe(64, 1024, 4, 4, 2, 16, 32, 32, 16, 128), FullPrecision = true });
        c.Add(new AttentionCase("small prefill, selfextend", Bf16Cache) { T = 24, Heads = 2, KvHeads = 1, HeadDim = 64, Remap = Uniform("selfextend", 32, 8, 4), Compute = DType.BF16 });
    }

    // The GPU's full-precision mode (--compute f32): f32 KV cache and f32 matmul operands, so every op agrees with the
    // CPU to f32 summation order, prefill matmuls (cuBLAS SGEMM or the GEMV fallback) and attention included.
    private static void AddFullPrecision(List<OpCase> c)
    {
        c.Add(new MatMulCase("Llama-2-7B q_proj prefill", F32) { Weight = DType.BF16, T = 512, N = 4096, Out = 4096, FullPrecision = true });
        c.Add(new MatMulCase("Llama-2-7B up_proj prefill", F32) { Weight = DType.BF16, T = 130, N = 4096, Out = 11008, FullPrecision = true });
        c.Add(new MatMulCase("awkward", F32) { Weight = DType.BF16, T = 33, N = 1025, Out = 127, FullPrecision = true });
        c.Add(new MatMulCase("awkward", F32) { Weight = DType.F16, T = 40, N = 100, Out = 50, FullPrecision = true });
        c.Add(new MatMulCase("awkward", F32) { Weight = DType.F32, T = 20, N = 64, Out = 33, FullPrecision = true });
        c.Add(new RopeCase("Llama-3-8B prefill", F32) { T = 64, Heads = 32, KvHeads = 8, HeadDim = 128, Theta = 500000f, FullPrecision = true });
        c.Add(new RopeCase("YaRN magnitude + query scale", F32) { T = 5, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 5000, Magnitude = 1.13f, QueryScale = true, FullPrecision = true });
        c.Add(new RopeCase("partial rotary", F32) { T = 31, Heads = 3, KvHeads = 1, HeadDim = 64, RotaryDim = 32, StartPos = 2, FullPrecision = true });
        c.Add(new AttentionCase("Llama-2-7B prefill", F32) { T = 256, Heads = 32, KvHeads = 32, HeadDim = 128, FullPrecision = true });
        c.Add(new AttentionCase("Llama-3-8B chunked prefill", F32) { T = 100, Heads = 8, KvHeads = 2, HeadDim = 128, StartPos = 1000, FullPrecision = true });
        c.Add(new AttentionCase("Llama-3-8B decode at 16k", F32) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16383, Theta = 500000f, FullPrecision = true });
        c.Add(new AttentionCase("head dim 256", F32) { T = 2, Heads = 2, KvHeads = 1, HeadDim = 256, StartPos = 70, FullPrecision = true });
        c.Add(new RerotateCase("dynamic NTK switch", F32) { T = 100, Heads = 8, KvHeads = 8, HeadDim = 64, FullPrecision = true });
        // bf16 rounding over an f32 cache: the kernel variants a bf16-emulating forward pass uses in this mode.
        c.Add(new RopeCase("Llama-2-7B prefill", 1e-6) { T = 64, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 3, Compute = DType.BF16, FullPrecision = true });
        c.Add(new AttentionCase("Llama-3-8B chunked prefill", Bf16Cache) { T = 100, Heads = 8, KvHeads = 2, HeadDim = 128, StartPos = 1000, Compute = DType.BF16, FullPrecision = true });
    }

    // Ops computing like a bf16 framework (Llama.Create activations: BF16): the same roundings on both backends, so the
    // element-wise ops differ only where exp, rsqrt or sin/cos land an ulp apart across a bf16 rounding boundary.
    // Attention rounds the softmax weights against different running maxima (CPU blocks of 512 keys, GPU tiles of 64).
    private static void AddBf16Compute(List<OpCase> c)
    {
        const double Elementwise = 1e-6;
        var bf = DType.BF16;
        foreach (var dt in new[] { DType.BF16, DType.F16 })
        {
            c.Add(new RoundCase("Llama-2-7B FFN", 0) { N = 11008 * 3, Compute = dt });
            foreach (int n in new[] { 1, 33, 1025 }) c.Add(new RoundCase("awkward", 0) { N = n, Compute = dt });
            c.Add(new RoundCase("awkward", 0) { N = 33, Compute = dt, Specials = true });
        }
        c.Add(new RmsNormCase("Llama-2-7B prefill", Elementwise) { T = 64, N = 4096, Compute = bf });
        c.Add(new RmsNormCase("Llama-2-7B decode", Elementwise) { T = 1, N = 4096, Compute = bf });
        c.Add(new RmsNormCase("awkward", Elementwise) { T = 2, N = 1025, Compute = bf });
        c.Add(new AddRmsNormCase("Llama-2-7B prefill", Elementwise) { T = 64, N = 4096, Compute = bf });
        c.Add(new AddRmsNormCase("awkward", Elementwise) { T = 2, N = 1025, Compute = bf });
        c.Add(new SwiGluCase("Llama-2-7B FFN x4", Elementwise) { N = 11008 * 4, Compute = bf });
        c.Add(new SwiGluCase("awkward", Elementwise) { N = 33, Compute = bf });
        c.Add(new RopeCase("Llama-2-7B prefill", Elementwise) { T = 64, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 3, Compute = bf });
        c.Add(new RopeCase("Llama-3-8B at 16k", Elementwise) { T = 3, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16381, Theta = 500000f, Compute = bf });
        c.Add(new RopeCase("YaRN magnitude + query scale", Elementwise) { T = 5, Heads = 4, KvHeads = 2, HeadDim = 64, StartPos = 5000, Magnitude = 1.13f, QueryScale = true, Compute = bf });
        c.Add(new RopeCase("partial rotary", Elementwise) { T = 31, Heads = 3, KvHeads = 1, HeadDim = 64, RotaryDim = 32, StartPos = 2, Compute = bf });
        c.Add(new AttentionCase("Llama-2-7B prefill, flash", Bf16Cache) { T = 256, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 0, Compute = bf });
        c.Add(new AttentionCase("Llama-2-7B chunked prefill, flash", Bf16Cache) { T = 64, Heads = 8, KvHeads = 8, HeadDim = 128, StartPos = 600, Compute = bf });
        c.Add(new AttentionCase("Llama-2-7B decode, tiled split-K", Bf16Cache) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, StartPos = 1500, Compute = bf });
        c.Add(new AttentionCase("Llama-3-8B decode, tiled", Bf16Cache) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 700, Compute = bf });
        c.Add(new AttentionCase("group of 16, untiled kernel", Bf16Cache) { T = 3, Heads = 16, KvHeads = 1, HeadDim = 64, StartPos = 600, Compute = bf });
    }

    /// <summary>The case named name (the id a test theory or `llama-run check` shows).</summary>
    public static OpCase Find(string name) =>
        All.SingleOrDefault(c => c.Name == name) ?? throw new ArgumentException($"no op case is named '{name}'", nameof(name));

    /// <summary>
    /// The GPU kernel benchmark (`llama-run bench --kernels`, bench/KernelBenchmarks): decode GEMV on the Llama-2-7B
    /// projections (stacked q/k/v and gate/up as the decode step runs them, o/down with the residual add and the next
    /// norm), prefill GEMM, RMSNorm and rotary over 16k
    /// tokens, decode attention at 4k and 16k depth and causal flash-attention prefill.
    /// </summary>
    public static IReadOnlyList<OpCase> Kernels { get; } = BuildKernels();

    private static List<OpCase> BuildKernels()
    {
        var c = new List<OpCase>();
        foreach (var (o, n, src) in new[] { (4096, 4096, "Llama-2-7B q_proj"), (12288, 4096, "Llama-2-7B stacked q/k/v"), (22016, 4096, "Llama-2-7B stacked gate/up"),
                     (4096, 11008, "Llama-2-7B down_proj"), (32000, 4096, "Llama-2-7B lm_head") })
            c.Add(new MatMulCase(src + " decode", 0) { Weight = DType.BF16, T = 1, N = n, Out = o });
        c.Add(new MatMulSwiGluCase("Llama-2-7B gate/up + swiglu decode", 0) { T = 1, N = 4096, Ff = 11008 });
        c.Add(new MatMulSwiGluCase("Llama-3-8B gate/up + swiglu decode", 0) { T = 1, N = 4096, Ff = 14336 });
        c.Add(new MatMulRopeCase("Llama-2-7B q/k/v + rope decode", 0) { T = 1, Heads = 32, KvHeads = 32, HeadDim = 128, N = 4096, StartPos = 4095 });
        c.Add(new MatMulAddRmsNormCase("Llama-2-7B o_proj + add + norm decode", 0) { N = 4096, Out = 4096 });
        c.Add(new MatMulAddRmsNormCase("Llama-2-7B down_proj + add + norm decode", 0) { N = 11008, Out = 4096 });
        foreach (var (t, o, n, src) in new[] { (512, 4096, 4096, "Llama-2-7B q_proj"), (4096, 11008, 4096, "Llama-2-7B up_proj"), (16384, 4096, 4096, "Llama-2-7B q_proj") })
            c.Add(new MatMulCase(src + " prefill", 0) { Weight = DType.BF16, T = t, N = n, Out = o });
        c.Add(new RmsNormCase("Llama-2-7B prefill 16k", 0) { T = 16384, N = 4096 });
        foreach (var (heads, kv, ctx, src) in new[] { (32, 32, 16384, "Llama-2-7B"), (32, 8, 4096, "Llama-3-8B"), (32, 8, 16384, "Llama-3-8B"), (64, 8, 16384, "Llama-3-70B") })
            c.Add(new AttentionCase($"{src} decode at {ctx / 1024}k", 0) { T = 1, Heads = heads, KvHeads = kv, HeadDim = 128, StartPos = ctx - 1, Theta = 500000f });
        foreach (var (t, heads, kv, hd, src) in new[] { (4096, 32, 8, 128, "Llama-3-8B"), (16384, 32, 8, 128, "Llama-3-8B"), (16384, 32, 8, 64, "head dim 64"),
                     (4096, 32, 32, 128, "Llama-2-7B"), (16384, 32, 32, 128, "Llama-2-7B") })
        {
            if (kv == 8) c.Add(new RopeCase($"{src} prefill {t / 1024}k", 0) { T = t, Heads = heads, KvHeads = kv, HeadDim = hd, Theta = 500000f });
            c.Add(new AttentionCase($"{src} causal prefill {t / 1024}k", 0) { T = t, Heads = heads, KvHeads = kv, HeadDim = hd, Theta = 500000f });
        }
        // An index remap (Self-Extend, window 1024, group 8): the far and near passes, or the split kernel.
        var selfExtend = new RopeRemap("selfextend", 1024, Enumerable.Repeat(8f, 64).ToArray());
        c.Add(new AttentionCase("Llama-3-8B causal prefill 16k, selfextend", 0) { T = 16384, Heads = 32, KvHeads = 8, HeadDim = 128, Theta = 500000f, Remap = selfExtend });
        c.Add(new AttentionCase("Llama-3-8B decode at 16k, selfextend", 0) { T = 1, Heads = 32, KvHeads = 8, HeadDim = 128, StartPos = 16383, Theta = 500000f, Remap = selfExtend });
        return c;
    }

    /// <summary>The CPU op benchmarks: the table without NaN injection plus decode shapes, minus what is too slow on 2 cores.</summary>
    public static IEnumerable<OpCase> CpuBenchmarks()
    {
        var decode = new List<OpCase>();
        foreach (var (n, o, src) in new[] { (768, 768, "stories110M qkvo"), (768, 2048, "stories110M gate/up"), (2048, 768, "stories110M down"),
                     (768, 32000, "stories110M lm_head"), (4096, 11008, "Llama-2-7B gate/up"), (4096, 32000, "Llama-2-7B lm_head") })
            decode.Add(new MatMulCase(src + " decode", 0) { Weight = DType.BF16, T = 1, N = n, Out = o });
        decode.Add(new AttentionCase("stories110M decode at 512", 0) { T = 1, Heads = 12, KvHeads = 12, HeadDim = 64, StartPos = 511 });
        return All.Where(c => !c.Specials).Concat(decode)
            .Where(c => c switch
            {
                AttentionCase or RerotateCase => c is HeadsCase h && (long)h.T * (h.StartPos + h.T) <= 1 << 20,
                MatMulCase m => (long)m.T * m.N * m.Out <= 1L << 30,
                _ => true,
            });
    }
}

// The round op case: F32 values rounded in place to bf16 or f16 (nearest even), over magnitudes from 2^-30 to 2^20
// (f16 subnormals and overflow), exact ties of both types, infinities and f32 subnormals. Must match bit for bit.
// Kernel: kernels/Round.cs; CPU: Cpu/CpuOps.Round.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Ops;

public sealed record RoundCase(string Source, double MaxNmse) : OpCase(Source, MaxNmse)
{
    public int N { get; init; } = 1;

    public override string Op => "round";
    protected override string Shape => $"n={N}";
    public override long Bytes(int kvElementSize) => N * 8L;
    public override long Work => N;

    public override PreparedOp Prepare(OpScope s, int copies = 1)
    {
        float[] xs = s.Uniform(N);
        for (int i = 0; i < xs.Length; i++) xs[i] *= MathF.Pow(2, s.NextInt(51) - 30);
        if (Specials)
        {
            float[] special =
            [
                float.PositiveInfinity, float.NegativeInfinity, 65520f, -65519f, 1e-40f, -3e-8f, 6e-8f,
                BitConverter.Int32BitsToSingle(0x3f808000), BitConverter.Int32BitsToSingle(0x3f818000), 1f + 1f / 2048, 1f + 3f / 2048,
                float.MaxValue, BitConverter.Int32BitsToSingle(0x7f7f8000),
            ];
            for (int i = 0; i < special.Length && 5 + i < xs.Length; i++) xs[5 + i] = special[i];
            InjectSpecials(xs, withInf: false);
        }
        var x = s.Upload(DType.F32, 1, N, xs, guard: true, name: "x");
        return new(_ => s.Backend.Round(x, Compute), s.Out("x", x));
    }
}

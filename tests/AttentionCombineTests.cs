// The split-K merge of decode attention (AttentionKernels.Combine) on ILGPU's CPU accelerator against a host merge in
// double precision, at split counts the CPU accelerator's own launches never reach (it has one multiprocessor, so
// its decode takes a few splits; a GPU takes hundreds): more splits than threads, counts that leave a remainder in
// every unrolled loop, empty splits, and head dims whose slices do not fill the group.
// Run: dotnet test tests/Tests.csproj --filter AttentionCombineTests
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using LlamaRun.Kernels;
using Xunit;

namespace LlamaRun.Tests;

public sealed class AttentionCombineTests
{
    [Theory]
    [InlineData(2, 64, 2)]
    [InlineData(3, 128, 37)]
    [InlineData(1, 64, 301)]
    [InlineData(2, 80, 9)]
    [InlineData(1, 256, 1030)]
    public void CombineMatchesADoublePrecisionMerge(int heads, int headDim, int splits)
    {
        const int tokens = 2;
        int stride = headDim + 2;
        var rng = new Random(headDim * 1000 + splits);
        var partial = new float[tokens * heads * splits * stride];
        for (int row = 0; row < tokens * heads; row++)
            for (int s = 0; s < splits; s++)
            {
                int b = (row * splits + s) * stride;
                if (s % 7 == 3)
                {
                    partial[b] = float.NegativeInfinity;   // an empty split (no keys in its range)
                    continue;
                }
                partial[b] = 4f * rng.NextSingle() - 2f;             // m
                partial[b + 1] = 0.5f + 3f * rng.NextSingle();      // l
                for (int d = 0; d < headDim; d++) partial[b + 2 + d] = 2f * rng.NextSingle() - 1f;
            }

        using var context = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)).EnableAlgorithms());
        using var accelerator = context.CreateCPUAccelerator(0);
        var kernel = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int>(AttentionKernels.Combine);
        using var src = accelerator.Allocate1D(partial);
        using var dst = accelerator.Allocate1D<float>(tokens * heads * headDim);
        kernel(new KernelConfig(new Index3D(heads, tokens, 1), new Index3D(AttentionKernels.CombineGroupSize, 1, 1)), src.View, dst.View, heads, headDim, splits);
        var actual = dst.GetAsArray1D();

        double worst = 0;
        for (int row = 0; row < tokens * heads; row++)
        {
            double mAll = double.NegativeInfinity;
            for (int s = 0; s < splits; s++) mAll = Math.Max(mAll, partial[(row * splits + s) * stride]);
            double lAll = 0;
            var sum = new double[headDim];
            for (int s = 0; s < splits; s++)
            {
                int b = (row * splits + s) * stride;
                if (partial[b + 1] == 0f) continue;
                double f = Math.Exp(partial[b] - mAll);
                lAll += partial[b + 1] * f;
                for (int d = 0; d < headDim; d++) sum[d] += partial[b + 2 + d] * f;
            }
            for (int d = 0; d < headDim; d++)
                worst = Math.Max(worst, Math.Abs(sum[d] / lAll - actual[row * headDim + d]));
        }
        Assert.True(worst < 1e-5, $"{splits} splits of head dim {headDim}: max |diff| {worst}");
    }
}

// The scalars of one decode step in device memory: the token and its position. A decode step replayed as a CUDA
// graph (GpuBackend's decode steps) launches its kernels with arguments fixed at capture; the kernels that depend on
// the position (Rope, RopeFar, the decode and split attention) read it from here when their StepPosition flag is set,
// and the embedding reads the token. The host writes both before each replay. Exercised by the decode-step tests of
// tests/GpuOpsTests.cs.
namespace LlamaRun.Kernels;

public static class DecodeStep
{
    /// <summary>Slots of the step buffer: the token id and its position.</summary>
    public const int Token = 0, Position = 1;

    /// <summary>Ints the step buffer holds.</summary>
    public const int Count = 2;
}

// Picks the compute backend for `--device cpu|cuda|auto`: auto uses CUDA when a driver, NVRTC and a GPU are
// present and falls back to the CPU otherwise; an explicit `cuda` fails with one line saying what is missing.
// fullPrecision asks the GPU for an f32 KV cache and exact f32 matmuls (the CPU backend always computes that way).
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Cuda;

namespace LlamaRun.Backends;

/// <summary>Creates backends by device name.</summary>
public static class BackendFactory
{
    /// <summary>Creates the backend for "cpu", "cuda" or "auto"; throws ArgumentException for anything else.</summary>
    public static IBackend Create(string device, bool fullPrecision = false)
    {
        switch (device)
        {
            case "cpu":
                return new CpuBackend();
            case "cuda":
                return (IBackend?)CudaBackend.TryCreate(out string reason, fullPrecision: fullPrecision) ?? throw new ArgumentException($"--device cuda: {reason}");
            case "auto":
                return (IBackend?)CudaBackend.TryCreate(out _, fullPrecision: fullPrecision) ?? new CpuBackend();
            default:
                throw new ArgumentException($"--device must be cpu, cuda or auto, got '{device}'");
        }
    }
}

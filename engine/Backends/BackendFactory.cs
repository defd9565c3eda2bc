// Picks the compute backend for `--device cpu|cuda|ilgpu-cpu|auto`: auto uses the GPU backend on CUDA when a driver and
// a GPU are present and falls back to the CPU otherwise; an explicit `cuda` fails with one line saying what is
// missing. `ilgpu-cpu` runs the GPU backend's kernels on ILGPU's CPU accelerator (slow: for debugging a kernel without
// a GPU). fullPrecision asks a GPU for an f32 KV cache and exact f32 matmuls (the CPU backend always computes that way).
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;

namespace LlamaRun.Backends;

/// <summary>Creates backends by device name.</summary>
public static class BackendFactory
{
    /// <summary>The names --device takes.</summary>
    public const string Devices = "cpu, cuda, ilgpu-cpu or auto";

    /// <summary>
    /// Creates the backend for a device name; throws ArgumentException for an unknown name or a missing GPU. A GPU
    /// backend compiles the kernel variants of `kernels` (default: all of them).
    /// </summary>
    public static IBackend Create(string device, bool fullPrecision = false, GpuKernelSet? kernels = null)
    {
        switch (device)
        {
            case "cpu":
                return new CpuBackend();
            case "cuda":
                return (IBackend?)GpuBackend.TryCreateCuda(out string reason, fullPrecision, kernels) ?? throw new ArgumentException($"--device cuda: {reason}");
            case "ilgpu-cpu":
                return GpuBackend.CreateCpuAccelerator(fullPrecision, kernels);
            case "auto":
                if (GpuBackend.TryCreateCuda(out string why, fullPrecision, kernels) is { } gpu) return gpu;
                Console.Error.WriteLine($"note: {why}; running on the CPU");
                return new CpuBackend();
            default:
                throw new ArgumentException($"--device must be {Devices}, got '{device}'");
        }
    }
}

// Picks the compute backend for `--device cpu|cuda|ilgpu-cpu|auto`: auto uses the GPU backend on CUDA when a driver and
// a GPU are present and falls back to the CPU otherwise; an explicit `cuda` fails with one line saying what is
// missing. `ilgpu-cpu` runs the GPU backend's kernels on ILGPU's CPU accelerator (slow: for debugging a kernel without
// a GPU). fullPrecision asks a GPU for an f32 KV cache and exact f32 matmuls (the CPU backend always computes that way)
// and the CPU for an f32 KV cache; otherwise the CPU cache is bf16 unless kvCache says F32 (`--kv f32`).
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
    /// Creates the backend for a device name with the KV cache type kvCache (null: the default); throws
    /// ArgumentException for an unknown name, a missing GPU or a cache type the device cannot keep. A GPU backend
    /// compiles the kernel variants of `kernels` (default: all of them).
    /// </summary>
    public static IBackend Create(string device, bool fullPrecision = false, DType? kvCache = null, GpuKernelSet? kernels = null)
    {
        var cpuKv = CpuKvCache(fullPrecision, kvCache);
        switch (device)
        {
            case "cpu":
                return new CpuBackend(cpuKv);
            case "cuda":
                CheckGpuKvCache(fullPrecision, kvCache);
                return (IBackend?)GpuBackend.TryCreateCuda(out string reason, fullPrecision, kernels) ?? throw new ArgumentException($"--device cuda: {reason}");
            case "ilgpu-cpu":
                CheckGpuKvCache(fullPrecision, kvCache);
                return GpuBackend.CreateCpuAccelerator(fullPrecision, kernels);
            case "auto":
                if (GpuBackend.TryCreateCuda(out string why, fullPrecision, kernels) is not { } gpu)
                {
                    Console.Error.WriteLine($"note: {why}; running on the CPU");
                    return new CpuBackend(cpuKv);
                }
                try { CheckGpuKvCache(fullPrecision, kvCache); }
                catch { gpu.Dispose(); throw; }
                return gpu;
            default:
                throw new ArgumentException($"--device must be {Devices}, got '{device}'");
        }
    }

    /// <summary>The CPU backend's KV cache type: kvCache if given, else F32 in full precision and BF16 otherwise.</summary>
    public static DType CpuKvCache(bool fullPrecision, DType? kvCache)
    {
        if (kvCache is { } kv && kv is not (DType.F32 or DType.BF16)) throw new ArgumentException($"--kv must be bf16 or f32, not {kv.Name().ToLowerInvariant()}");
        if (fullPrecision && kvCache == DType.BF16) throw new ArgumentException("--compute f32 keeps an f32 KV cache; drop --kv bf16");
        return kvCache ?? (fullPrecision ? DType.F32 : DType.BF16);
    }

    // The GPU's cache follows --compute: bf16, or f32 in full precision.
    private static void CheckGpuKvCache(bool fullPrecision, DType? kvCache)
    {
        if (kvCache == DType.F32 && !fullPrecision) throw new ArgumentException("--kv f32 on the GPU needs --compute f32 (its cache is bf16 otherwise)");
    }
}

// Picks the compute backend for `--device cpu|cuda|auto`: auto uses CUDA when a driver, NVRTC and a GPU are
// present and falls back to the CPU otherwise; an explicit `cuda` fails with one line saying what is missing.
// fullPrecision asks the GPU for an f32 KV cache and exact f32 matmuls (the CPU backend always computes that way) and
// the CPU for an f32 KV cache; otherwise the CPU cache is bf16 unless kvCache says F32 (`--kv f32`).
using LlamaRun.Core;
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Cuda;

namespace LlamaRun.Backends;

/// <summary>Creates backends by device name.</summary>
public static class BackendFactory
{
    /// <summary>Creates the backend for "cpu", "cuda" or "auto" with the KV cache type kvCache (null: the default); throws ArgumentException for anything else.</summary>
    public static IBackend Create(string device, bool fullPrecision = false, DType? kvCache = null)
    {
        var cpuKv = CpuKvCache(fullPrecision, kvCache);
        switch (device)
        {
            case "cpu":
                return new CpuBackend(cpuKv);
            case "cuda":
                CheckCudaKvCache(fullPrecision, kvCache);
                return (IBackend?)CudaBackend.TryCreate(out string reason, fullPrecision: fullPrecision) ?? throw new ArgumentException($"--device cuda: {reason}");
            case "auto":
                if (CudaBackend.TryCreate(out _, fullPrecision: fullPrecision) is not { } cuda) return new CpuBackend(cpuKv);
                try { CheckCudaKvCache(fullPrecision, kvCache); }
                catch { cuda.Dispose(); throw; }
                return cuda;
            default:
                throw new ArgumentException($"--device must be cpu, cuda or auto, got '{device}'");
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
    private static void CheckCudaKvCache(bool fullPrecision, DType? kvCache)
    {
        if (kvCache == DType.F32 && !fullPrecision) throw new ArgumentException("--kv f32 on the GPU needs --compute f32 (its cache is bf16 otherwise)");
    }
}

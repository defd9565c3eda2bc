// Hand-written binding of the ~25 CUDA driver API functions the backend uses, loaded from libcuda.so.1 at run time
// through function pointers, and the one error checker Cu.Check. Without a driver, Cu.TryLoad says why in one line.
// Exercised by tests/BackendOpsTests.cs (GPU) and `llama-run --device cuda`.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace LlamaRun.Backends.Cuda;

/// <summary>A failed CUDA driver call, named with the error and the call expression.</summary>
public sealed class CudaException(string message) : Exception(message);

internal static unsafe class Cu
{
    public const int Success = 0;
    public const int DeviceAttributeComputeCapabilityMajor = 75;
    public const int DeviceAttributeComputeCapabilityMinor = 76;
    public const int DeviceAttributeMultiprocessorCount = 16;
    public const int StreamNonBlocking = 1;
    public const int FuncAttributePreferredSharedCarveout = 9;   // percent of the unified L1/shared storage

    private static readonly Lazy<string?> LoadError = new(Load);   // null once loaded, else why not (runs once)

    public static delegate* unmanaged<uint, int> cuInit;
    public static delegate* unmanaged<int*, int> cuDriverGetVersion;
    public static delegate* unmanaged<int*, int> cuDeviceGetCount;
    public static delegate* unmanaged<int*, int, int> cuDeviceGet;
    public static delegate* unmanaged<byte*, int, int, int> cuDeviceGetName;
    public static delegate* unmanaged<int*, int, int, int> cuDeviceGetAttribute;
    public static delegate* unmanaged<nuint*, int, int> cuDeviceTotalMem;
    public static delegate* unmanaged<nint*, int, int> cuDevicePrimaryCtxRetain;
    public static delegate* unmanaged<int, int> cuDevicePrimaryCtxRelease;
    public static delegate* unmanaged<nint, int> cuCtxSetCurrent;
    public static delegate* unmanaged<nint*, uint, int> cuStreamCreate;
    public static delegate* unmanaged<nint, int> cuStreamDestroy;
    public static delegate* unmanaged<nint, int> cuStreamSynchronize;
    public static delegate* unmanaged<ulong*, nuint, int> cuMemAlloc;
    public static delegate* unmanaged<ulong, int> cuMemFree;
    public static delegate* unmanaged<nuint*, nuint*, int> cuMemGetInfo;
    public static delegate* unmanaged<ulong, void*, nuint, nint, int> cuMemcpyHtoDAsync;
    public static delegate* unmanaged<void*, ulong, nuint, nint, int> cuMemcpyDtoHAsync;
    public static delegate* unmanaged<ulong, ulong, nuint, nint, int> cuMemcpyDtoDAsync;
    public static delegate* unmanaged<ulong, byte, nuint, nint, int> cuMemsetD8Async;
    public static delegate* unmanaged<nint*, void*, int> cuModuleLoadData;
    public static delegate* unmanaged<nint, int> cuModuleUnload;
    public static delegate* unmanaged<nint*, nint, byte*, int> cuModuleGetFunction;
    public static delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> cuLaunchKernel;
    public static delegate* unmanaged<nint, int, int, int> cuFuncSetAttribute;
    public static delegate* unmanaged<int, byte**, int> cuGetErrorName;

    /// <summary>Loads libcuda and calls cuInit once; false with a one-line reason when that is impossible.</summary>
    public static bool TryLoad(out string reason)
    {
        reason = LoadError.Value ?? "";
        return LoadError.Value is null;
    }

    private static string? Load()
    {
        if (!NativeLibrary.TryLoad("libcuda.so.1", out nint lib) && !NativeLibrary.TryLoad("libcuda.so", out lib)
            && !NativeLibrary.TryLoad("nvcuda.dll", out lib))
            return "no CUDA driver (libcuda.so.1 not found)";
        var exports = new NativeExports(lib);
        nint Get(string name) => exports.Get(name);
        cuInit = (delegate* unmanaged<uint, int>)Get("cuInit");
        cuDriverGetVersion = (delegate* unmanaged<int*, int>)Get("cuDriverGetVersion");
        cuDeviceGetCount = (delegate* unmanaged<int*, int>)Get("cuDeviceGetCount");
        cuDeviceGet = (delegate* unmanaged<int*, int, int>)Get("cuDeviceGet");
        cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)Get("cuDeviceGetName");
        cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)Get("cuDeviceGetAttribute");
        cuDeviceTotalMem = (delegate* unmanaged<nuint*, int, int>)Get("cuDeviceTotalMem_v2");
        cuDevicePrimaryCtxRetain = (delegate* unmanaged<nint*, int, int>)Get("cuDevicePrimaryCtxRetain");
        cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)Get("cuDevicePrimaryCtxRelease_v2");
        cuCtxSetCurrent = (delegate* unmanaged<nint, int>)Get("cuCtxSetCurrent");
        cuStreamCreate = (delegate* unmanaged<nint*, uint, int>)Get("cuStreamCreate");
        cuStreamDestroy = (delegate* unmanaged<nint, int>)Get("cuStreamDestroy_v2");
        cuStreamSynchronize = (delegate* unmanaged<nint, int>)Get("cuStreamSynchronize");
        cuMemAlloc = (delegate* unmanaged<ulong*, nuint, int>)Get("cuMemAlloc_v2");
        cuMemFree = (delegate* unmanaged<ulong, int>)Get("cuMemFree_v2");
        cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)Get("cuMemGetInfo_v2");
        cuMemcpyHtoDAsync = (delegate* unmanaged<ulong, void*, nuint, nint, int>)Get("cuMemcpyHtoDAsync_v2");
        cuMemcpyDtoHAsync = (delegate* unmanaged<void*, ulong, nuint, nint, int>)Get("cuMemcpyDtoHAsync_v2");
        cuMemcpyDtoDAsync = (delegate* unmanaged<ulong, ulong, nuint, nint, int>)Get("cuMemcpyDtoDAsync_v2");
        cuMemsetD8Async = (delegate* unmanaged<ulong, byte, nuint, nint, int>)Get("cuMemsetD8Async");
        cuModuleLoadData = (delegate* unmanaged<nint*, void*, int>)Get("cuModuleLoadData");
        cuModuleUnload = (delegate* unmanaged<nint, int>)Get("cuModuleUnload");
        cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)Get("cuModuleGetFunction");
        cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)Get("cuFuncSetAttribute");
        cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)Get("cuLaunchKernel");
        cuGetErrorName = (delegate* unmanaged<int, byte**, int>)Get("cuGetErrorName");
        if (exports.AnyMissing) return $"CUDA driver too old: missing {exports.MissingList}";
        int r = cuInit(0);
        if (r != Success) return $"CUDA driver present but cuInit failed: {ErrorName(r)}";
        int count;
        r = cuDeviceGetCount(&count);
        if (r != Success) return $"cuDeviceGetCount failed: {ErrorName(r)}";
        if (count == 0) return "CUDA driver present but no CUDA device found";
        return null;
    }

    public static string ErrorName(int r)
    {
        byte* s = null;
        if (cuGetErrorName != null && cuGetErrorName(r, &s) == Success && s != null)
            return Marshal.PtrToStringUTF8((nint)s) ?? $"CUresult {r}";
        return $"CUresult {r}";
    }

    /// <summary>Throws <see cref="CudaException"/> naming the error and the call when r is not CUDA_SUCCESS.</summary>
    public static void Check(int r, [CallerArgumentExpression(nameof(r))] string? call = null)
    {
        if (r != Success) throw new CudaException($"{ErrorName(r)}: {call}");
    }
}

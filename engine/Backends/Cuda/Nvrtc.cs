// Hand-written binding of NVRTC (run-time CUDA C compiler): loads libnvrtc.so.13/.12/.11.2 (or $LLAMA_NVRTC) and
// compiles one source with headers and options into PTX or CUBIN, or throws NvrtcException with the log.
// Exercised by tests/CudaCompileTests.cs, which needs only NVRTC (no GPU).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace LlamaRun.Backends.Cuda;

/// <summary>A failed NVRTC call or compilation, with the source file name and the compiler log.</summary>
public sealed class NvrtcException(string message) : Exception(message);

internal static unsafe class Nvrtc
{
    private static readonly Lazy<string?> LoadError = new(Load);   // null once loaded, else why not (runs once)

    private static delegate* unmanaged<int*, int*, int> nvrtcVersion;
    private static delegate* unmanaged<int, byte*> nvrtcGetErrorString;
    private static delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> nvrtcCreateProgram;
    private static delegate* unmanaged<nint*, int> nvrtcDestroyProgram;
    private static delegate* unmanaged<nint, int, byte**, int> nvrtcCompileProgram;
    private static delegate* unmanaged<nint, nuint*, int> nvrtcGetProgramLogSize;
    private static delegate* unmanaged<nint, byte*, int> nvrtcGetProgramLog;
    private static delegate* unmanaged<nint, nuint*, int> nvrtcGetPTXSize;
    private static delegate* unmanaged<nint, byte*, int> nvrtcGetPTX;
    private static delegate* unmanaged<nint, nuint*, int> nvrtcGetCUBINSize;
    private static delegate* unmanaged<nint, byte*, int> nvrtcGetCUBIN;
    private static delegate* unmanaged<int*, int> nvrtcGetNumSupportedArchs;
    private static delegate* unmanaged<int*, int> nvrtcGetSupportedArchs;

    /// <summary>"major.minor" of the loaded NVRTC.</summary>
    public static string Version { get; private set; } = "";

    /// <summary>The file NVRTC was loaded from.</summary>
    public static string LibraryName { get; private set; } = "";

    public static bool TryLoad(out string reason)
    {
        reason = LoadError.Value ?? "";
        return LoadError.Value is null;
    }

    private static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable("LLAMA_NVRTC") is { Length: > 0 } explicitPath) yield return explicitPath;
        string[] names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"];
        foreach (var n in names) yield return n;
        var dirs = new List<string>();
        if (Environment.GetEnvironmentVariable("CUDA_PATH") is { Length: > 0 } cudaPath) dirs.Add(Path.Combine(cudaPath, "lib64"));
        dirs.AddRange(["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]);
        foreach (var d in dirs)
            foreach (var n in names)
                yield return Path.Combine(d, n);
    }

    private static string? Load()
    {
        nint lib = 0;
        foreach (var name in Candidates())
        {
            if (NativeLibrary.TryLoad(name, out lib))
            {
                LibraryName = name;
                break;
            }
        }
        if (lib == 0) return "no NVRTC (tried libnvrtc.so.13, .12, .11.2 and /usr/local/cuda/lib64; set LLAMA_NVRTC to its path)";
        var exports = new NativeExports(lib);
        nint Get(string name, bool required = true) => exports.Get(name, required);
        nvrtcVersion = (delegate* unmanaged<int*, int*, int>)Get("nvrtcVersion");
        nvrtcGetErrorString = (delegate* unmanaged<int, byte*>)Get("nvrtcGetErrorString");
        nvrtcCreateProgram = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)Get("nvrtcCreateProgram");
        nvrtcDestroyProgram = (delegate* unmanaged<nint*, int>)Get("nvrtcDestroyProgram");
        nvrtcCompileProgram = (delegate* unmanaged<nint, int, byte**, int>)Get("nvrtcCompileProgram");
        nvrtcGetProgramLogSize = (delegate* unmanaged<nint, nuint*, int>)Get("nvrtcGetProgramLogSize");
        nvrtcGetProgramLog = (delegate* unmanaged<nint, byte*, int>)Get("nvrtcGetProgramLog");
        nvrtcGetPTXSize = (delegate* unmanaged<nint, nuint*, int>)Get("nvrtcGetPTXSize");
        nvrtcGetPTX = (delegate* unmanaged<nint, byte*, int>)Get("nvrtcGetPTX");
        nvrtcGetCUBINSize = (delegate* unmanaged<nint, nuint*, int>)Get("nvrtcGetCUBINSize", false);
        nvrtcGetCUBIN = (delegate* unmanaged<nint, byte*, int>)Get("nvrtcGetCUBIN", false);
        nvrtcGetNumSupportedArchs = (delegate* unmanaged<int*, int>)Get("nvrtcGetNumSupportedArchs", false);
        nvrtcGetSupportedArchs = (delegate* unmanaged<int*, int>)Get("nvrtcGetSupportedArchs", false);
        if (exports.AnyMissing) return $"{LibraryName} is not a usable NVRTC: missing {exports.MissingList}";
        int major, minor;
        if (nvrtcVersion(&major, &minor) != 0) return $"{LibraryName}: nvrtcVersion failed";
        Version = $"{major}.{minor}";
        return null;
    }

    /// <summary>Real architectures (e.g. 80, 90) this NVRTC can emit CUBIN for; empty when it cannot say.</summary>
    public static int[] SupportedArchs()
    {
        if (nvrtcGetNumSupportedArchs == null || nvrtcGetSupportedArchs == null || nvrtcGetCUBIN == null) return [];
        int n;
        if (nvrtcGetNumSupportedArchs(&n) != 0 || n <= 0) return [];
        var archs = new int[n];
        fixed (int* p = archs)
            if (nvrtcGetSupportedArchs(p) != 0) return [];
        return archs;
    }

    private static void Check(int r, [CallerArgumentExpression(nameof(r))] string? call = null)
    {
        if (r != 0) throw new NvrtcException($"{Marshal.PtrToStringUTF8((nint)nvrtcGetErrorString(r))}: {call}");
    }

    /// <summary>Compiles source; returns CUBIN when cubin is true (options name sm_XX), else PTX (NUL-terminated).</summary>
    public static byte[] Compile(string source, string fileName, IReadOnlyList<(string Name, string Source)> headers,
        IReadOnlyList<string> options, bool cubin)
    {
        if (!TryLoad(out string reason)) throw new NvrtcException(reason);
        var pinned = new List<nint>();
        nint Utf8(string s)
        {
            nint p = Marshal.StringToCoTaskMemUTF8(s);
            pinned.Add(p);
            return p;
        }
        try
        {
            byte** headerSrc = stackalloc byte*[headers.Count];
            byte** headerNames = stackalloc byte*[headers.Count];
            for (int i = 0; i < headers.Count; i++)
            {
                headerSrc[i] = (byte*)Utf8(headers[i].Source);
                headerNames[i] = (byte*)Utf8(headers[i].Name);
            }
            byte** opts = stackalloc byte*[options.Count];
            for (int i = 0; i < options.Count; i++) opts[i] = (byte*)Utf8(options[i]);
            nint prog;
            Check(nvrtcCreateProgram(&prog, (byte*)Utf8(source), (byte*)Utf8(fileName), headers.Count, headerSrc, headerNames));
            try
            {
                int r = nvrtcCompileProgram(prog, options.Count, opts);
                if (r != 0)
                {
                    nuint logSize;
                    Check(nvrtcGetProgramLogSize(prog, &logSize));
                    var log = new byte[(int)logSize];
                    fixed (byte* l = log) Check(nvrtcGetProgramLog(prog, l));
                    string text = Encoding.UTF8.GetString(log).TrimEnd('\0', '\n');
                    throw new NvrtcException($"{fileName}: NVRTC {Version} compilation failed ({string.Join(' ', options)}):\n{text}");
                }
                nuint size;
                if (cubin) Check(nvrtcGetCUBINSize(prog, &size));
                else Check(nvrtcGetPTXSize(prog, &size));
                var image = new byte[(int)size];
                fixed (byte* p = image)
                {
                    if (cubin) Check(nvrtcGetCUBIN(prog, p));
                    else Check(nvrtcGetPTX(prog, p));
                }
                return image;
            }
            finally
            {
                nvrtcDestroyProgram(&prog);
            }
        }
        finally
        {
            foreach (var p in pinned) Marshal.FreeCoTaskMem(p);
        }
    }
}

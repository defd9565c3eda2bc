// Compiles the embedded kernels/*.cu with NVRTC for one GPU architecture, no GPU needed, with an on-disk cache
// (~/.cache/llama-run/kernels or $LLAMA_KERNEL_CACHE) keyed by hash(source + header + options + NVRTC version).
// Exercised by tests/CudaCompileTests.cs (compute_80 and compute_90) and by KernelLibrary at start-up.
using System.Reflection;
using System.Security.Cryptography;
using System.Text;

namespace LlamaRun.Backends.Cuda;

/// <summary>One kernel source file embedded in the engine.</summary>
public sealed record KernelSource(string FileName, string Source);

/// <summary>A compiled image of one kernel file: CUBIN for a real architecture, or PTX for a virtual one.</summary>
public sealed record CompiledKernel(string FileName, string Target, bool IsCubin, byte[] Image);

/// <summary>Compiles the embedded CUDA C kernels with NVRTC; usable without a GPU.</summary>
public sealed class KernelCompiler
{
    private const string Header = "common.cuh";
    private readonly string? _cacheDir;

    /// <summary>Creates a compiler; cacheDir null disables the disk cache.</summary>
    public KernelCompiler(string? cacheDir) => _cacheDir = cacheDir;

    /// <summary>True when an NVRTC library could be loaded; otherwise reason says why.</summary>
    public static bool IsAvailable(out string reason) => Nvrtc.TryLoad(out reason);

    /// <summary>Version of the loaded NVRTC ("11.8", "13.0").</summary>
    public static string NvrtcVersion => Nvrtc.Version;

    /// <summary>The default cache folder: $LLAMA_KERNEL_CACHE or ~/.cache/llama-run/kernels.</summary>
    public static string DefaultCacheDir() =>
        Environment.GetEnvironmentVariable("LLAMA_KERNEL_CACHE") is { Length: > 0 } dir ? dir
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "llama-run", "kernels");

    /// <summary>Every embedded .cu file (the header excluded), in name order.</summary>
    public static IReadOnlyList<KernelSource> Sources() =>
        [.. ResourceNames().Where(n => n.EndsWith(".cu", StringComparison.Ordinal)).Order(StringComparer.Ordinal)
            .Select(n => new KernelSource(n["kernels/".Length..], ReadResource(n)))];

    private static IEnumerable<string> ResourceNames() =>
        typeof(KernelCompiler).Assembly.GetManifestResourceNames().Where(n => n.StartsWith("kernels/", StringComparison.Ordinal));

    private static string ReadResource(string name)
    {
        using var s = typeof(KernelCompiler).Assembly.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded kernel {name} missing from {typeof(KernelCompiler).Assembly.GetName().Name}");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    /// <summary>Picks "sm_XY" (CUBIN) when NVRTC can emit code for the device, else the newest "compute_XY" not above it.</summary>
    public static string TargetFor(int major, int minor)
    {
        if (!Nvrtc.TryLoad(out string reason)) throw new NvrtcException(reason);
        int arch = major * 10 + minor;
        int[] supported = Nvrtc.SupportedArchs();
        if (supported.Contains(arch)) return $"sm_{arch}";
        int best = supported.Where(a => a <= arch).DefaultIfEmpty(Math.Min(arch, 80)).Max();
        return $"compute_{best}";
    }

    /// <summary>Compiles (or reads from the cache) one kernel file for target ("sm_90", "compute_80").</summary>
    public CompiledKernel Compile(KernelSource kernel, string target)
    {
        if (!Nvrtc.TryLoad(out string reason)) throw new NvrtcException(reason);
        bool cubin = target.StartsWith("sm_", StringComparison.Ordinal);
        string header = ReadResource("kernels/" + Header);
        string[] options = [$"--gpu-architecture={target}", "--std=c++17", "-default-device", "-lineinfo", "-DNDEBUG"];
        string key = CacheKey(kernel.Source, header, options);
        string? path = _cacheDir is null ? null
            : Path.Combine(_cacheDir, $"{Path.GetFileNameWithoutExtension(kernel.FileName)}-{target}-{key}.{(cubin ? "cubin" : "ptx")}");
        if (path is not null && File.Exists(path))
        {
            try { return new CompiledKernel(kernel.FileName, target, cubin, File.ReadAllBytes(path)); }
            catch (IOException) { }
        }
        byte[] image = Nvrtc.Compile(kernel.Source, kernel.FileName, [(Header, header)], options, cubin);
        if (path is not null) TryWrite(path, image);
        return new CompiledKernel(kernel.FileName, target, cubin, image);
    }

    private static string CacheKey(string source, string header, string[] options)
    {
        var text = string.Join("\n\0", [source, header, .. options, Nvrtc.Version, Nvrtc.LibraryName]);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
    }

    private static void TryWrite(string path, byte[] image)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string tmp = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(tmp, image);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only cache only costs a recompile next time.
        }
    }
}

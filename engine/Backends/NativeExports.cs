// Exports of a native library loaded at run time (libcuda, libcublas, libnccl): every required name that is absent
// is collected, so the one-line error lists them all. Used by the driver and cuBLAS bindings; exercised by their loading.
using System.Runtime.InteropServices;

namespace LlamaRun.Backends;

internal sealed class NativeExports(nint library)
{
    /// <summary>The first of the candidates (paths, or names for the loader's search) that loads, and which; 0 when none does.</summary>
    public static nint LoadFirst(IEnumerable<string> candidates, out string loaded)
    {
        foreach (var c in candidates)
        {
            if ((c.Contains('/') && !File.Exists(c)) || !NativeLibrary.TryLoad(c, out nint lib)) continue;
            loaded = c;
            return lib;
        }
        loaded = "";
        return 0;
    }

    private readonly List<string> _missing = [];

    /// <summary>Required names the library does not export, in the order they were asked for.</summary>
    public string MissingList => string.Join(", ", _missing);

    public bool AnyMissing => _missing.Count > 0;

    /// <summary>The address of name, or 0 (noted as missing when required).</summary>
    public nint Get(string name, bool required = true)
    {
        if (NativeLibrary.TryGetExport(library, name, out nint f)) return f;
        if (required) _missing.Add(name);
        return 0;
    }
}

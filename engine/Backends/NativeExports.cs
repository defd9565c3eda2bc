// Exports of a native library loaded at run time (libcuda, libcublas): every required name that is absent
// is collected, so the one-line error lists them all. Used by the driver and cuBLAS bindings; exercised by their loading.
using System.Runtime.InteropServices;

namespace LlamaRun.Backends;

internal sealed class NativeExports(nint library)
{
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

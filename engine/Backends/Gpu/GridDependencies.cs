// Programmatic dependent launch for the kernels of a decode step's CUDA graph (sm_90 and newer): a kernel's launch
// overlaps the end of the kernel before it instead of following its completion. ILGPU 1.5 writes PTX for sm_80 at
// most, which has no griddepcontrol; so on a GPU of compute capability 9.0 or newer the loader retargets each
// kernel's PTX to sm_90 with griddepcontrol.wait as the kernel's first instruction (it returns once the grids the
// kernel depends on have completed and their writes are visible), and keeps the loaded function's handle; the capture
// then turns the graph's edges into such kernels into programmatic ones (GpuNative.EndCapture). Outside a graph the
// wait returns at once. LLAMA_PDL=0 turns it off (the PTX as ILGPU wrote it).
// H100, Llama-2-7B shape, tg128 alternated: 190.12 / 190.01 t/s against 188.23 / 188.31 off; at depth 16384 122.80
// against 122.02. Measured and dropped (same card, another run: 189.20 this way, 188.28 / 187.85 off): the GEMVs'
// first weight loads before their wait, with or without griddepcontrol.launch_dependents after it (171.5-175.3), and
// launch_dependents after every kernel's wait (188.97, no better); on another H100, the GEMVs asking L2 for the first
// 64 (or 128) lines of their rows before their wait, with launch_dependents after every wait or without: tg128 193.65
// / 193.32 (193.52; 192.98 without) against 205.04 / 206.11, at depth 16384 123.01 / 123.17 against 129.21 / 129.97.
// Exercised by tests/GridDependencyTests.cs (every kernel's PTX patched) and, on a GPU, by every decode-step test.
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.RegularExpressions;
using ILGPU.Backends.PTX;

namespace LlamaRun.Backends.Gpu;

public static partial class GridDependencies
{
    /// <summary>LLAMA_PDL: 0 turns programmatic dependent launch off; on by default where the GPU and driver have it.</summary>
    public static bool Enabled => Environment.GetEnvironmentVariable("LLAMA_PDL") != "0";

    // LLAMA_PDL_TRIGGER=1 (tuning): every kernel lets the next one launch right after its wait
    // (griddepcontrol.launch_dependents). H100, Llama-2-7B shape, one call: tg128 208.11 t/s against 205.04 / 206.11
    // without, at depth 16384 128.67 against 129.21 / 129.97.
    private static readonly bool Trigger = Environment.GetEnvironmentVariable("LLAMA_PDL_TRIGGER") == "1";

    /// <summary>
    /// The kernel's PTX for sm_90 (PTX ISA 7.8 at least) with griddepcontrol.wait before its first instruction. Throws
    /// FormatException when the PTX is not one ILGPU kernel of the expected form.
    /// </summary>
    public static string Patch(string ptx)
    {
        var target = TargetLine().Match(ptx);
        var version = VersionLine().Match(ptx);
        if (!target.Success || !version.Success || version.Index > target.Index) throw new FormatException("PTX without .version and .target lines");
        var s = new StringBuilder(ptx.Length + 64);
        s.Append(ptx, 0, version.Index);
        s.Append(double.Parse(version.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) < 7.8 ? ".version 7.8" : version.Value);
        s.Append(ptx, version.Index + version.Length, target.Index - version.Index - version.Length);
        s.Append(int.Parse(target.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) < 90 ? ".target sm_90" : target.Value);
        string body = ptx[(target.Index + target.Length)..];
        // Right after the entry's declarations, before its first instruction.
        var entry = EntryOpen().Match(body);
        if (!entry.Success) throw new FormatException("PTX without a .entry body");
        int at = entry.Index + entry.Length;
        foreach (var line in body[at..].Split('\n'))
        {
            string t = line.Trim();
            if (t.Length > 0 && !t.StartsWith(".reg", StringComparison.Ordinal) && !t.StartsWith(".shared", StringComparison.Ordinal)
                && !t.StartsWith(".local", StringComparison.Ordinal))
                break;
            at += line.Length + 1;
        }
        string wait = Trigger ? "griddepcontrol.wait; griddepcontrol.launch_dependents;" : "griddepcontrol.wait;";
        return s.Append(body, 0, at).Append('\t').Append(wait).Append('\n').Append(body, at, body.Length - at).ToString();
    }

    /// <summary>Replaces a compiled kernel's PTX by its Patch, before the driver loads it.</summary>
    public static void Retarget(PTXCompiledKernel kernel) => PtxAssembly(kernel) = Patch(kernel.PTXAssembly);

    // ILGPU keeps the PTX in a get-only property; the loader (CudaAccelerator.LoadKernel) reads it from there.
    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "<PTXAssembly>k__BackingField")]
    private static extern ref string PtxAssembly(PTXCompiledKernel kernel);

    [GeneratedRegex(@"^\.target sm_(\d+)[a-z]?", RegexOptions.Multiline)]
    private static partial Regex TargetLine();

    [GeneratedRegex(@"^\.version (\d+\.\d+)", RegexOptions.Multiline)]
    private static partial Regex VersionLine();

    [GeneratedRegex(@"\.entry [^\(]*\([^\)]*\)[^\{]*\{[^\n]*\n")]
    private static partial Regex EntryOpen();
}

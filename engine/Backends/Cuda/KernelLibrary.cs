// Loads every compiled kernel file into the current CUDA context and resolves the named entry points eagerly,
// failing with the full list of missing names. Compiles through KernelCompiler (disk-cached) for the device's arch.
// Exercised by CudaBackend construction (tests/BackendOpsTests.cs).
using System.Text;

namespace LlamaRun.Backends.Cuda;

internal sealed unsafe class KernelLibrary : IDisposable
{
    private readonly List<nint> _modules = [];
    private readonly Dictionary<string, nint> _functions = new(StringComparer.Ordinal);

    /// <summary>Target the kernels were compiled for ("sm_90" or "compute_80").</summary>
    public string Target { get; }

    public KernelLibrary(int ccMajor, int ccMinor, IReadOnlyList<string> entryPoints)
    {
        Target = KernelCompiler.TargetFor(ccMajor, ccMinor);
        var compiler = new KernelCompiler(KernelCompiler.DefaultCacheDir());
        try
        {
            foreach (var source in KernelCompiler.Sources())
            {
                var compiled = compiler.Compile(source, Target);
                nint module;
                fixed (byte* image = compiled.Image) Cu.Check(Cu.cuModuleLoadData(&module, image));
                _modules.Add(module);
            }
            var missing = new List<string>();
            foreach (var name in entryPoints)
            {
                nint f = Find(name);
                if (f == 0) missing.Add(name);
                else _functions[name] = f;
            }
            if (missing.Count > 0)
                throw new CudaException($"kernel entry points not found in kernels/*.cu: {string.Join(", ", missing)}");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private nint Find(string name)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(name + "\0");
        foreach (var module in _modules)
        {
            nint f;
            fixed (byte* n = utf8)
                if (Cu.cuModuleGetFunction(&f, module, n) == Cu.Success) return f;
        }
        return 0;
    }

    public nint this[string name] => _functions[name];

    public void Dispose()
    {
        foreach (var m in _modules) Cu.cuModuleUnload(m);
        _modules.Clear();
    }
}

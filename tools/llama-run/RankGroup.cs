// The backends and communicator of `--tp N` (bench and check): GPUs 0 .. N-1 through NCCL, or N CPU backends with the
// in-process communicator. Every refusal is one line before anything loads: a device other than cpu or cuda, sizes
// that do not split N ways, fewer GPUs than N, no NCCL.
using LlamaRun.Backends.Cpu;
using LlamaRun.Backends.Gpu;
using LlamaRun.Core;
using LlamaRun.Model;

namespace LlamaRun.Cli;

internal sealed class RankGroup : IDisposable
{
    private RankGroup(string device, List<IBackend> backends, ICommunicator communicator)
    {
        Device = device;
        Backends = backends;
        Communicator = communicator;
    }

    /// <summary>"cuda" or "cpu".</summary>
    public string Device { get; }

    public List<IBackend> Backends { get; }

    public ICommunicator Communicator { get; }

    /// <summary>--device for --tp: cuda or cpu (auto: cuda where a GPU is present).</summary>
    public static string ResolveDevice(string device)
    {
        if (device == "auto") device = GpuBackend.IsCudaAvailable(out _) ? "cuda" : "cpu";
        return device is "cuda" or "cpu" ? device : throw new UsageException($"--tp runs on --device cuda or cpu, not {device}");
    }

    /// <summary>Throws the one-line reason config does not split `ranks` ways (on `device`), if it does not.</summary>
    public static void Validate(LlamaConfig config, int ranks, string device)
    {
        try
        {
            for (int r = 0; r < ranks; r++) ShardPlan.For(config, r, ranks);
        }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
        if (device == "cuda" && GpuBackend.CudaDeviceCount is var count && count < ranks)
            throw new UsageException($"--tp {ranks} needs {ranks} GPUs; {count} found");
    }

    /// <summary>Rank r's backend on device: GPU r, or a CPU backend with a cpuKv cache.</summary>
    public static IBackend Backend(string device, int r, bool fullPrecision, GpuKernelSet? kernels, DType cpuKv) => device == "cuda"
        ? GpuBackend.TryCreateCuda(out string why, fullPrecision, kernels, device: r) ?? throw new UsageException($"GPU {r}: {why}")
        : new CpuBackend(cpuKv);

    /// <summary>The ranks' backends and their communicator, validated first (device as ResolveDevice returns it).</summary>
    public static RankGroup Open(LlamaConfig config, int ranks, string device, bool fullPrecision, GpuKernelSet? kernels, DType cpuKv)
    {
        Validate(config, ranks, device);
        var backends = new List<IBackend>();
        try
        {
            for (int r = 0; r < ranks; r++) backends.Add(Backend(device, r, fullPrecision, kernels, cpuKv));
            ICommunicator comm = device == "cuda"
                ? NcclCommunicator.TryCreate([.. backends.Cast<GpuBackend>()], out string reason) ?? throw new UsageException($"--tp {ranks}: {reason}")
                : new InProcessCommunicator(ranks);
            return new RankGroup(device, backends, comm);
        }
        catch
        {
            foreach (var b in backends) b.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        (Communicator as IDisposable)?.Dispose();
        foreach (var b in Backends) b.Dispose();
    }
}

// Benchmark entry point: `--quick [--device D] [--no-generate] [--profile]` prints a markdown report without BenchmarkDotNet;
// anything else goes to BenchmarkDotNet (in-process), e.g. `--filter '*MemoryBandwidth*'` or `--list flat`.
using BenchmarkDotNet.Running;
using LlamaRun.Bench;

if (args.Contains("--quick"))
{
    int i = Array.IndexOf(args, "--device");
    string device = i >= 0 && i + 1 < args.Length ? args[i + 1] : "cpu";
    try { return QuickBench.Run(device, generate: !args.Contains("--no-generate"), profile: args.Contains("--profile")); }
    catch (ArgumentException e)
    {
        Console.Error.WriteLine($"bench: {e.Message}");
        return 1;
    }
}

var types = new List<Type> { typeof(MemoryBandwidth), typeof(CpuOpsBenchmarks), typeof(GenerateBenchmarks) };
if (KernelBenchmarks.Unavailable() is { } why)
    Console.WriteLine($"KernelBenchmarks skipped: {why}");
else
    types.Add(typeof(KernelBenchmarks));
var summaries = BenchmarkSwitcher.FromTypes([.. types]).Run(args, BenchConfig.Create());
return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;

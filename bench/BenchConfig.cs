// BenchmarkDotNet setup shared by every benchmark class: in-process toolchain (the published program runs without the
// .NET SDK), a short fixed job, and columns in physical units: GB/s, TFLOP/s, tokens/s and % of the bandwidth bound.
using System.Globalization;
using System.Reflection;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.NoEmit;
using Perfolizer.Horology;

namespace LlamaRun.Bench;

/// <summary>Marks a benchmark method that moves a fixed number of bytes per operation (for the GB/s column).</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class BytesPerOperationAttribute(long bytes) : Attribute
{
    public long Bytes { get; } = bytes;
}

/// <summary>Marks a benchmark method whose operation is one generated or prefilled token (for the tokens/s columns).</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class TokenOperationAttribute : Attribute;

/// <summary>The configuration every benchmark runs with.</summary>
public static class BenchConfig
{
    /// <summary>In-process job (warmup 3, 10 iterations of about 250 ms) plus the unit columns.</summary>
    public static IConfig Create() => ManualConfig.CreateEmpty()
        .AddJob(Job.Default.WithToolchain(InProcessNoEmitToolchain.Instance).WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10)
            .WithIterationTime(TimeInterval.FromMilliseconds(250))
            .WithId("InProcess"))
        .AddColumnProvider(DefaultColumnProviders.Instance)
        .AddColumn(
            new UnitColumn("GB/s", "Bytes moved (read + written) per second, 1e9", (c, ns) => BytesOf(c) is { } b ? b / ns : null),
            new UnitColumn("TFLOP/s", "Floating-point operations per second, 1e12 (2 per multiply-add)",
                (c, ns) => Param<BenchCase>(c) is { Flops: > 0 } bc ? bc.Flops / ns / 1e3 : null),
            new UnitColumn("tok/s", "Tokens per second", (c, ns) => IsToken(c) ? 1e9 / ns : null),
            new UnitColumn("% of bound", "Decode speed over the weight-read bound (measured read GB/s / bytes of weights per token)",
                (c, ns) => IsToken(c) && c.Descriptor.WorkloadMethod.Name == nameof(GenerateBenchmarks.Decode)
                    && GenerateBenchmarks.BoundFor(c) is { } bound ? 100 * (1e9 / ns) / bound : null),
            new UnitColumn("bound tok/s", "Read GB/s measured in the same run / bytes of weights per token",
                (c, _) => IsToken(c) && c.Descriptor.WorkloadMethod.Name == nameof(GenerateBenchmarks.Decode) ? GenerateBenchmarks.BoundFor(c) : null))
        .AddLogger(ConsoleLogger.Default)
        .AddExporter(MarkdownExporter.GitHub)
        .WithOption(ConfigOptions.JoinSummary, false);

    private static T? Param<T>(BenchmarkCase c) where T : class =>
        c.Parameters.Items.Select(p => p.Value).OfType<T>().FirstOrDefault();

    private static double? BytesOf(BenchmarkCase c) =>
        Param<BenchCase>(c)?.Bytes ?? c.Descriptor.WorkloadMethod.GetCustomAttribute<BytesPerOperationAttribute>()?.Bytes;

    private static bool IsToken(BenchmarkCase c) => c.Descriptor.WorkloadMethod.GetCustomAttribute<TokenOperationAttribute>() is not null;

    /// <summary>A numeric column computed from the case and its mean time per operation in nanoseconds.</summary>
    private sealed class UnitColumn(string name, string legend, Func<BenchmarkCase, double, double?> value) : IColumn
    {
        public string Id => "LlamaRun." + name;
        public string ColumnName => name;
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => legend;

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, summary.Style);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var stats = summary[benchmarkCase]?.ResultStatistics;
            if (stats is null || stats.Mean <= 0) return "-";
            var v = value(benchmarkCase, stats.Mean);
            return v is { } x ? x.ToString(x >= 100 ? "F0" : x >= 10 ? "F1" : "F2", CultureInfo.InvariantCulture) : "-";
        }

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => summary.BenchmarksCases.Any(c => summary[c]?.ResultStatistics is { } s
            && value(c, s.Mean) is not null);
    }
}

// What rope-opt measures: for each compared method, its table at the target length and its per-pair DPRoPE
// disturbance against plain RoPE's pre-training angle distribution. Run: rope-opt --head-dim 128 --base 10000
// --orig 4096 --target 8192 --compare pi,yarn,dprope --json
using LlamaRun.Core;
using LlamaRun.Model;
using LlamaRun.Rope;

namespace LlamaRun.RopeOpt;

/// <summary>One compared method: its spec, table and per-pair disturbance.</summary>
public sealed record MethodResult(string Name, RopeTable Table, double[] Disturbance)
{
    /// <summary>Mean over pairs (the DPRoPE paper's D).</summary>
    public double Mean => Disturbance.Average();
}

/// <summary>Everything rope-opt computed for one run.</summary>
public sealed record Comparison(DpropeSetup Setup, IReadOnlyList<MethodResult> Methods, RopeTable Saved, string SavedName);

/// <summary>Builds the compared tables and their disturbances.</summary>
public static class Objective
{
    /// <summary>Tables for each spec (via RopeMethods.Parse at the target length) plus the saved method's, with disturbances.</summary>
    public static Comparison Run(LlamaConfig config, DpropeSetup setup, IReadOnlyList<string> compare, string saveSpec)
    {
        var names = compare.Contains(saveSpec) ? compare.ToList() : [.. compare, saveSpec];
        var tables = names.Select(n => WithSetup(n, setup)).Select(spec => RopeMethods.Parse(spec, config, setup.TargetLength).For(setup.TargetLength)).ToList();
        // The disturbance is of a frequency table's angle distribution; an index remap changes positions, not frequencies.
        if (tables.FindIndex(t => t.Remap is not null) is int r and >= 0)
            throw new ArgumentException($"{names[r]} remaps positions: rope-opt compares frequency tables (compare remaps with llama-run perplexity or passkey --sweep; rope-opt detect writes DPE tables)");
        var d = Dprope.Disturbances(setup, [.. tables.Select(t => t.InvFreq)]);
        var results = names.Select((n, i) => new MethodResult(n, tables[i], d[i])).ToList();
        var saved = results.First(r => r.Name == saveSpec);
        return new Comparison(setup, [.. results.Where(r => compare.Contains(r.Name))], saved.Table, saveSpec);
    }

    // DPRoPE-family specs take the histogram bin count from --bins unless the spec names one.
    private static string WithSetup(string spec, DpropeSetup setup)
    {
        string method = spec.Split(':')[0].Trim().ToLowerInvariant();
        if (setup.Bins == 360 || spec.Contains("bins=", StringComparison.OrdinalIgnoreCase)) return spec;
        if (method is not ("dprope" or "dprope-plus" or "auto")) return spec;
        return spec + (spec.Contains(':') ? "," : ":") + "bins=" + setup.Bins;
    }
}

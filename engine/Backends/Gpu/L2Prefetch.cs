// The L2 prefetch size of the loads that stream decode's weights and KV cache (StreamedU4's
// ld.global.nc.L1::no_allocate, kernels/Device/Streamed.cs): LLAMA_L2_PREFETCH=64, 128 or 256 adds .L2::64B / 128B /
// 256B to each of them in a kernel's PTX before the driver loads it, so that a miss has L2 fetch that many bytes from
// memory at once (a weight row and a key's slice of a head are read whole, in order). A tuning switch, off (the loads
// as written) unless set. Exercised by tests/L2PrefetchTests.cs (every streamed load of every kernel, nothing else).
using System.Text.RegularExpressions;

namespace LlamaRun.Backends.Gpu;

public static partial class L2Prefetch
{
    /// <summary>LLAMA_L2_PREFETCH: 64, 128 or 256 bytes; 0 (unset or anything else): no hint.</summary>
    public static int Bytes { get; } = Environment.GetEnvironmentVariable("LLAMA_L2_PREFETCH") switch
    {
        "64" => 64,
        "128" => 128,
        "256" => 256,
        _ => 0,
    };

    /// <summary>The PTX with every streamed load hinted to prefetch `bytes` (64, 128 or 256) into L2.</summary>
    public static string Patch(string ptx, int bytes)
    {
        if (bytes is not (64 or 128 or 256)) throw new ArgumentOutOfRangeException(nameof(bytes), $"L2 prefetch size {bytes} is not 64, 128 or 256");
        return StreamedLoad().Replace(ptx, $"ld.global.nc.L1::no_allocate.L2::{bytes}B.v4.b32");
    }

    [GeneratedRegex(@"ld\.global\.nc\.L1::no_allocate\.v4\.b32")]
    private static partial Regex StreamedLoad();
}

// The device's read bandwidth, measured by a pure-read kernel (kernels/MemoryRead.cs) over a buffer far larger than the
// L2 cache: the bound `llama-run bench` judges GPU decode against, measured in the same run. Each pass queues 8 reads
// of the buffer back to back and synchronizes once, so launch overhead is amortized; the best pass counts.
// Test: GpuOpsTests.ReadProbeReadsEveryVector.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using LlamaRun.Core;
using LlamaRun.Kernels.Device;

namespace LlamaRun.Backends.Gpu;

public sealed partial class GpuBackend
{
    /// <summary>A device buffer of `bytes` (rounded down to 16 bytes) for read-bandwidth measurements; freed by Dispose.</summary>
    public ReadProbe CreateReadProbe(long bytes = 1L << 30) => new(this, bytes);

    /// <summary>Repeated pure-read passes over one device buffer.</summary>
    public sealed class ReadProbe : IReadProbe
    {
        private const int ReadsPerPass = 8;
        private readonly GpuBackend _b;
        private MemoryBuffer1D<U4, Stride1D.Dense>? _buffer;
        private readonly MemoryBuffer1D<uint, Stride1D.Dense> _result;

        internal ReadProbe(GpuBackend b, long bytes)
        {
            if (bytes < 16) throw new ArgumentOutOfRangeException(nameof(bytes), $"a read probe of {bytes} bytes");
            _b = b;
            b._accelerator.Bind();
            _buffer = b._accelerator.Allocate1D<U4>(bytes / 16);
            _buffer.MemSetToZero(b._stream);
            _result = b._accelerator.Allocate1D<uint>(1);
        }

        public long Bytes => _buffer!.Length * 16;

        public string Description => (Bytes >= 1 << 20 ? $"{Bytes >> 20} MiB" : $"{Bytes >> 10} KiB") + $" read by a pure-read kernel, {ReadsPerPass} reads a pass";

        /// <summary>Copies values into the start of the buffer (tests: the XOR Checksum then covers them).</summary>
        public void Fill(ReadOnlySpan<uint> words)
        {
            if (words.Length % 4 != 0 || words.Length / 4 > _buffer!.Length) throw new ArgumentException("words must fill whole 16-byte vectors of the buffer", nameof(words));
            var host = new U4[words.Length / 4];
            for (int i = 0; i < host.Length; i++) host[i] = new U4 { X = words[4 * i], Y = words[4 * i + 1], Z = words[4 * i + 2], W = words[4 * i + 3] };
            _b._accelerator.Bind();
            _buffer.View.SubView(0, host.Length).CopyFromCPU(_b._stream, host);
        }

        /// <summary>The XOR of every 32-bit word of the buffer, by one read.</summary>
        public uint Checksum()
        {
            _b._accelerator.Bind();
            _result.MemSetToZero(_b._stream);
            _b._launch.MemoryRead(_buffer!.View, _result.View);
            var r = new uint[1];
            _result.View.CopyToCPU(_b._stream, r);
            return r[0];
        }

        public double Measure(int passes = 8)
        {
            _b._accelerator.Bind();
            Checksum();   // warm-up
            double best = double.MaxValue;
            for (int p = 0; p < passes; p++)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < ReadsPerPass; i++) _b._launch.MemoryRead(_buffer!.View, _result.View);
                _b._stream.Synchronize();
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds / ReadsPerPass);
            }
            return Bytes / best / 1e9;
        }

        public void Dispose()
        {
            if (_buffer is null) return;
            _b._accelerator.Bind();
            _b._stream.Synchronize();
            _buffer.Dispose();
            _result.Dispose();
            _buffer = null;
        }
    }
}

// GpuBackend's memory: tensors as ILGPU buffers (zero-filled allocations, uploads, downloads in the stream's order),
// the KV cache in the backend's element type, and the grow-on-demand int buffer for token ids and argmax indices.
// Exercised by tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Runtime;

using LlamaRun.Core;
namespace LlamaRun.Backends.Gpu;

public sealed unsafe partial class GpuBackend
{
    // A buffer of at least one byte (ILGPU allocates no empty buffers) viewed as exactly `bytes` bytes.
    private Tensor Own(DType dtype, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        long bytes = (long)rows * cols * dtype.Size();
        MemoryBuffer1D<byte, Stride1D.Dense> buffer;
        try
        {
            buffer = _accelerator.Allocate1D<byte>(Math.Max(bytes, 1));
        }
        catch (Exception e) when (e is not ArgumentException)
        {
            throw new GpuException($"out of {Name} memory allocating {dtype.Name()}[{rows}, {cols}] ({bytes / 1e9:F2} GB): {e.Message.Split('\n')[0]}", e);
        }
        return new Tensor(this, dtype, rows, cols, buffer.View.SubView(0, bytes), _ =>
        {
            if (!_disposed) buffer.Dispose();   // a disposed accelerator has freed its buffers
        });
    }

    public Tensor Alloc(DType dtype, int rows, int cols)
    {
        _accelerator.Bind();
        NotInStep("Alloc");
        var t = Own(dtype, rows, cols);
        if (t.ByteLength > 0) t.Bytes.MemSetToZero(_stream);
        return t;
    }

    public Tensor Upload(DType dtype, int rows, int cols, nint hostData)
    {
        _accelerator.Bind();
        NotInStep("Upload");
        var t = Own(dtype, rows, cols);
        if (t.ByteLength > 0)
        {
            if (hostData == 0) throw new ArgumentException("hostData is null", nameof(hostData));
            t.Bytes.CopyFromCPU(_stream, ref *(byte*)hostData, t.ByteLength);   // waits: the caller may free hostData
        }
        return t;
    }

    public void Download(Tensor src, Span<float> dst)
    {
        _accelerator.Bind();
        NotInStep("Download");
        RequireOwn(src, nameof(src));
        if (dst.Length < src.Length) throw new ArgumentException($"destination holds {dst.Length} floats, {src} needs {src.Length}", nameof(dst));
        Reads(src);
        if (src.Length == 0)
        {
            _stream.Synchronize();
            return;
        }
        if (src.DType == DType.F32)
        {
            fixed (float* p = dst) src.Bytes.CopyToCPU(_stream, ref *(byte*)p, src.ByteLength);
            return;
        }
        var bits = new ushort[src.Length];
        fixed (ushort* p = bits) src.Bytes.CopyToCPU(_stream, ref *(byte*)p, src.ByteLength);
        for (long i = 0; i < bits.LongLength; i++)
            dst[(int)i] = src.DType == DType.BF16 ? DTypes.BF16ToF32(bits[i]) : DTypes.F16ToF32(bits[i]);
    }

    public KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim, bool farKeys = false)
    {
        var dtype = _fullPrecision ? DType.F32 : DType.BF16;
        int rows = checked(numLayers * maxSeq), kvDim = checked(numKvHeads * headDim);
        var k = Alloc(dtype, rows, kvDim);
        try
        {
            var v = Alloc(dtype, rows, kvDim);
            try
            {
                return new KvCache(k, v, numLayers, maxSeq, numKvHeads, headDim, farKeys ? Alloc(dtype, rows, kvDim) : null);
            }
            catch
            {
                v.Dispose();
                throw;
            }
        }
        catch
        {
            k.Dispose();
            throw;
        }
    }

    // The int buffer for token ids and argmax indices, grown (doubling) after the stream has finished with the old one.
    // The far pass's rows of an index-remap flash attention, [tokens, heads, headDim + 2] floats, grown on demand.
    private MemoryBuffer1D<float, Stride1D.Dense> EnsureRemapPartial(long floats)
    {
        if (_remapPartial is { } p && p.Length >= floats) return p;
        _stream.Synchronize();
        _remapPartial?.Dispose();
        _remapPartial = null;
        _remapPartial = _accelerator.Allocate1D<float>(floats);
        return _remapPartial;
    }

    // A fused op's [rows, cols] product where its kernel does not apply (each op its own buffer), remade when the shape
    // changes (so made outside a captured decode step: the step's first run makes it).
    private Tensor EnsureScratch(ref Tensor? scratch, int rows, int cols)
    {
        if (scratch is { } t && t.Cols == cols && t.Rows >= rows) return t.SliceRows(0, rows);
        _stream.Synchronize();
        scratch?.Dispose();
        scratch = null;
        scratch = Own(DType.F32, rows, cols);
        return scratch;
    }

    private MemoryBuffer1D<int, Stride1D.Dense> EnsureInts(int count)
    {
        if (_ints is { } ints && ints.Length >= count) return ints;
        _stream.Synchronize();
        long capacity = Math.Max(count, 2 * (_ints?.Length ?? 0));
        _ints?.Dispose();
        _ints = null;
        _ints = _accelerator.Allocate1D<int>(capacity);
        return _ints;
    }
}

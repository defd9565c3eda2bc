// CudaBackend's device memory: allocation, uploads and downloads (synchronous on the one stream), the KV cache in the
// backend's element type, and the small grow-on-demand int buffers. Exercised by tests/BackendOpsTests.cs.
using LlamaRun.Core;

namespace LlamaRun.Backends.Cuda;

public sealed unsafe partial class CudaBackend
{
    private ulong Malloc(long bytes)
    {
        ulong p;
        Cu.Check(Cu.cuMemAlloc(&p, (nuint)Math.Max(bytes, 1)));
        return p;
    }

    private static void Free(ulong p)
    {
        if (p != 0) Cu.cuMemFree(p);   // dispose paths never throw
    }

    private Tensor Own(DType dtype, int rows, int cols, ulong p) =>
        new(this, dtype, rows, cols, (nint)p, t =>
        {
            if (!_disposed && Cu.cuCtxSetCurrent(_context) == Cu.Success) Free((ulong)t.Pointer);
        });

    public Tensor Alloc(DType dtype, int rows, int cols)
    {
        Bind();
        long bytes = (long)rows * cols * dtype.Size();
        ulong p = Malloc(bytes);
        Cu.Check(Cu.cuMemsetD8Async(p, 0, (nuint)bytes, _stream));
        return Own(dtype, rows, cols, p);
    }

    public Tensor Upload(DType dtype, int rows, int cols, nint hostData)
    {
        Bind();
        long bytes = (long)rows * cols * dtype.Size();
        ulong p = Malloc(bytes);
        if (bytes > 0)
        {
            Cu.Check(Cu.cuMemcpyHtoDAsync(p, (void*)hostData, (nuint)bytes, _stream));
            Cu.Check(Cu.cuStreamSynchronize(_stream));
        }
        return Own(dtype, rows, cols, p);
    }

    public void Download(Tensor src, Span<float> dst)
    {
        if (src.DType != DType.F32)
        {
            DownloadAsF32(src, dst);
            return;
        }
        if (dst.Length < src.Length) throw new ArgumentException($"destination holds {dst.Length} floats, {src} needs {src.Length}", nameof(dst));
        DownloadBytes(src, MemoryMarshalBytes(dst), src.ByteLength);
    }

    /// <summary>Copies any tensor to host as F32 (bf16 and f16 converted), after all queued work; for tests and checks.</summary>
    public void DownloadAsF32(Tensor src, Span<float> dst)
    {
        if (src.DType == DType.F32)
        {
            Download(src, dst);
            return;
        }
        var raw = new ushort[src.Length];
        DownloadBytes(src, System.Runtime.InteropServices.MemoryMarshal.AsBytes(raw.AsSpan()), src.ByteLength);
        for (long i = 0; i < raw.LongLength; i++)
            dst[(int)i] = src.DType == DType.BF16 ? DTypes.BF16ToF32(raw[i]) : DTypes.F16ToF32(raw[i]);
    }

    private static Span<byte> MemoryMarshalBytes(Span<float> s) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(s);

    private void DownloadBytes(Tensor src, Span<byte> dst, long bytes)
    {
        Bind();
        fixed (byte* p = dst)
        {
            if (bytes > 0) Cu.Check(Cu.cuMemcpyDtoHAsync(p, (ulong)src.Pointer, (nuint)bytes, _stream));
            Cu.Check(Cu.cuStreamSynchronize(_stream));
        }
    }

    public KvCache AllocKvCache(int numLayers, int maxSeq, int numKvHeads, int headDim)
    {
        var dtype = _fullPrecision ? DType.F32 : DType.BF16;
        var k = Alloc(dtype, numLayers * maxSeq, numKvHeads * headDim);
        var v = Alloc(dtype, numLayers * maxSeq, numKvHeads * headDim);
        return new KvCache(k, v, numLayers, maxSeq, numKvHeads, headDim);
    }

    // Grows a device buffer of ints to hold count (doubling), after the stream has finished with the old one.
    private void EnsureInts(ref ulong buffer, ref int capacity, int count)
    {
        if (count <= capacity) return;
        Cu.Check(Cu.cuStreamSynchronize(_stream));
        Free(buffer);
        buffer = 0;
        capacity = Math.Max(count, 2 * capacity);
        buffer = Malloc(capacity * 4L);
    }

    private void EnsureTokens(int count) => EnsureInts(ref _tokens, ref _tokenCapacity, count);

    private void EnsureArgmax(int count) => EnsureInts(ref _argmax, ref _argmaxCapacity, count);
}

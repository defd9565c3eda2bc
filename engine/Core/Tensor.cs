// A 2-D tensor handle: element type, [Rows, Cols], and where element [0, 0] lives on its backend: a host address for
// CPU tensors, an ILGPU view of the tensor's bytes for GPU tensors. Views share storage and own nothing.
using ILGPU;

namespace LlamaRun.Core;

/// <summary>A row-major [Rows, Cols] block of elements owned by (or viewed on) one backend.</summary>
public sealed class Tensor : IDisposable
{
    private Action<Tensor>? _free;

    /// <summary>A tensor in host memory at pointer.</summary>
    public Tensor(IBackend backend, DType dtype, int rows, int cols, nint pointer, Action<Tensor>? free)
        : this(backend, dtype, rows, cols, pointer, default, false, free)
    {
    }

    /// <summary>A tensor in accelerator memory: bytes is the view of its Rows * Cols elements.</summary>
    public Tensor(IBackend backend, DType dtype, int rows, int cols, ArrayView<byte> bytes, Action<Tensor>? free)
        : this(backend, dtype, rows, cols, 0, bytes, true, free)
    {
        if (bytes.Length != (long)rows * cols * dtype.Size())
            throw new ArgumentException($"a view of {bytes.Length} bytes cannot hold {dtype.Name()}[{rows}, {cols}]", nameof(bytes));
    }

    private Tensor(IBackend backend, DType dtype, int rows, int cols, nint pointer, ArrayView<byte> bytes, bool onAccelerator, Action<Tensor>? free)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        Backend = backend;
        DType = dtype;
        Rows = rows;
        Cols = cols;
        Pointer = pointer;
        Bytes = bytes;
        OnAccelerator = onAccelerator;
        _free = free;
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public int Rows { get; }
    public int Cols { get; }

    /// <summary>Host address of element [0, 0] (0 for accelerator tensors).</summary>
    public nint Pointer { get; }

    /// <summary>The tensor's bytes on an accelerator (an empty view for host tensors).</summary>
    public ArrayView<byte> Bytes { get; }

    /// <summary>True for tensors in accelerator memory (Bytes), false for host tensors (Pointer).</summary>
    public bool OnAccelerator { get; }

    public long Length => (long)Rows * Cols;
    public long ByteLength => Length * DType.Size();

    /// <summary>A non-owning view of rows [row, row + count).</summary>
    public Tensor SliceRows(int row, int count)
    {
        if ((uint)row > (uint)Rows || (uint)count > (uint)(Rows - row))
            throw new ArgumentOutOfRangeException(nameof(row), $"rows [{row}, {row + count}) outside [0, {Rows})");
        long offset = (long)row * Cols * DType.Size();
        return OnAccelerator
            ? new Tensor(Backend, DType, count, Cols, Bytes.SubView(offset, (long)count * Cols * DType.Size()), null)
            : new Tensor(Backend, DType, count, Cols, Pointer + (nint)offset, null);
    }

    /// <summary>A non-owning view of columns [col, col + count) of a one-row tensor (contiguous, unlike columns of several rows).</summary>
    public Tensor SliceCols(int col, int count)
    {
        if (Rows != 1) throw new InvalidOperationException($"column views need a one-row tensor, not {this}");
        if ((uint)col > (uint)Cols || (uint)count > (uint)(Cols - col))
            throw new ArgumentOutOfRangeException(nameof(col), $"columns [{col}, {col + count}) outside [0, {Cols})");
        long offset = (long)col * DType.Size();
        return OnAccelerator
            ? new Tensor(Backend, DType, 1, count, Bytes.SubView(offset, (long)count * DType.Size()), null)
            : new Tensor(Backend, DType, 1, count, Pointer + (nint)offset, null);
    }

    public override string ToString() => $"{DType.Name()}[{Rows}, {Cols}]";

    public void Dispose()
    {
        var free = _free;
        _free = null;
        free?.Invoke(this);
    }
}

/// <summary>
/// Keys and values of every layer: K and V are [NumLayers * MaxSeq, NumKvHeads * HeadDim]. For an index-remap RoPE
/// (RopeTable.Remap) KFar holds the same keys rotated to their grouped positions, which distant queries score against.
/// </summary>
public sealed class KvCache(Tensor k, Tensor v, int numLayers, int maxSeq, int numKvHeads, int headDim, Tensor? kFar = null) : IDisposable
{
    public Tensor K { get; } = k;   // [numLayers * maxSeq, kvDim], rotated keys
    public Tensor V { get; } = v;   // [numLayers * maxSeq, kvDim]
    public Tensor? KFar { get; } = kFar;   // [numLayers * maxSeq, kvDim], keys rotated to grouped positions, or null
    public int NumLayers { get; } = numLayers;
    public int MaxSeq { get; } = maxSeq;
    public int NumKvHeads { get; } = numKvHeads;
    public int HeadDim { get; } = headDim;
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>Rows of layer <paramref name="layer"/>: [MaxSeq, KvDim].</summary>
    public Tensor LayerK(int layer) => K.SliceRows(layer * MaxSeq, MaxSeq);
    public Tensor LayerV(int layer) => V.SliceRows(layer * MaxSeq, MaxSeq);
    public Tensor LayerKFar(int layer) => (KFar ?? throw new InvalidOperationException("this KV cache has no grouped keys (no index-remap RoPE)"))
        .SliceRows(layer * MaxSeq, MaxSeq);

    public void Dispose()
    {
        K.Dispose();
        V.Dispose();
        KFar?.Dispose();
    }
}

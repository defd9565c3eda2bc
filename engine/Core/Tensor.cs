// A 2-D tensor handle: element type, [Rows, Cols], and the address of element [0, 0] on its backend.
// CPU tensors hold host addresses, CUDA tensors device addresses; views share storage and own nothing.

namespace LlamaRun.Core;

/// <summary>A row-major [Rows, Cols] block of elements owned by (or viewed on) one backend.</summary>
public sealed class Tensor : IDisposable
{
    private Action<Tensor>? _free;

    public Tensor(IBackend backend, DType dtype, int rows, int cols, nint pointer, Action<Tensor>? free)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        Backend = backend;
        DType = dtype;
        Rows = rows;
        Cols = cols;
        Pointer = pointer;
        _free = free;
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public int Rows { get; }
    public int Cols { get; }

    /// <summary>Host address (CPU) or device address (CUDA) of element [0, 0].</summary>
    public nint Pointer { get; }

    public long Length => (long)Rows * Cols;
    public long ByteLength => Length * DType.Size();

    /// <summary>A non-owning view of rows [row, row + count).</summary>
    public Tensor SliceRows(int row, int count)
    {
        if ((uint)row > (uint)Rows || (uint)count > (uint)(Rows - row))
            throw new ArgumentOutOfRangeException(nameof(row), $"rows [{row}, {row + count}) outside [0, {Rows})");
        return new Tensor(Backend, DType, count, Cols, Pointer + (nint)((long)row * Cols * DType.Size()), null);
    }

    /// <summary>A non-owning view of columns [col, col + count) of a one-row tensor (contiguous, unlike columns of several rows).</summary>
    public Tensor SliceCols(int col, int count)
    {
        if (Rows != 1) throw new InvalidOperationException($"column views need a one-row tensor, not {this}");
        if ((uint)col > (uint)Cols || (uint)count > (uint)(Cols - col))
            throw new ArgumentOutOfRangeException(nameof(col), $"columns [{col}, {col + count}) outside [0, {Cols})");
        return new Tensor(Backend, DType, 1, count, Pointer + (nint)((long)col * DType.Size()), null);
    }

    public override string ToString() => $"{DType.Name()}[{Rows}, {Cols}]";

    public void Dispose()
    {
        var free = _free;
        _free = null;
        free?.Invoke(this);
    }
}

/// <summary>Keys and values of every layer: K and V are [NumLayers * MaxSeq, NumKvHeads * HeadDim].</summary>
public sealed class KvCache(Tensor k, Tensor v, int numLayers, int maxSeq, int numKvHeads, int headDim) : IDisposable
{
    public Tensor K { get; } = k;   // [numLayers * maxSeq, kvDim], rotated keys
    public Tensor V { get; } = v;   // [numLayers * maxSeq, kvDim]
    public int NumLayers { get; } = numLayers;
    public int MaxSeq { get; } = maxSeq;
    public int NumKvHeads { get; } = numKvHeads;
    public int HeadDim { get; } = headDim;
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>Rows of layer <paramref name="layer"/>: [MaxSeq, KvDim].</summary>
    public Tensor LayerK(int layer) => K.SliceRows(layer * MaxSeq, MaxSeq);
    public Tensor LayerV(int layer) => V.SliceRows(layer * MaxSeq, MaxSeq);

    public void Dispose()
    {
        K.Dispose();
        V.Dispose();
    }
}

// Random weights for a Llama shape alone, without files: every tensor a checkpoint of the config holds
// (CheckpointWriter.Tensors), in one dtype, generated in host memory when the loader asks for a range of it and freed
// once the backend has its copy. Element i of tensor t is a hash of (seed, t, i), so a tensor-parallel rank generates
// its rows without the rest, in parallel over the host's cores. Matrices are uniform in +-1/sqrt(in), norms in
// [0.95, 1.05], as CheckpointWriter's files (not the same values). `llama-run bench` uses them for a directory that
// holds only a config.json, or for --shape: a 70B benchmarked on GPUs whose disk cannot hold its checkpoint.
// Exercised by tests/WeightsTests.cs.
using System.Runtime.InteropServices;
using LlamaRun.Core;

namespace LlamaRun.Model;

/// <summary>Seeded random weights of a Llama shape, as a weight source for LlamaWeights.Load.</summary>
public sealed unsafe class RandomWeights : IWeightSource
{
    private const long Chunk = 1 << 20;   // elements a parallel task generates

    private readonly Dictionary<string, TensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (ulong Stream, float Scale, bool Norm)> _kinds = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<nint>> _buffers = new(StringComparer.Ordinal);
    private readonly DType _dtype;
    private readonly ulong _seed;

    public RandomWeights(LlamaConfig config, DType dtype, int seed)
    {
        if (dtype is not (DType.F32 or DType.F16 or DType.BF16)) throw new ArgumentException($"random weights are F32, F16 or BF16, not {dtype.Name()}", nameof(dtype));
        _dtype = dtype;
        _seed = (ulong)seed;
        ulong stream = 0;
        foreach (var (name, shape, norm) in CheckpointWriter.Tensors(config))
        {
            long bytes = shape.Aggregate(1L, (a, b) => checked(a * b)) * dtype.Size();
            _tensors[name] = new TensorInfo(name, dtype.Name(), shape, 0, bytes);
            _kinds[name] = (stream++, norm ? 0f : 1f / MathF.Sqrt(shape[1]), norm);
        }
        Source = $"random {dtype.Name()} weights (seed {seed}) for a Llama of hidden {config.HiddenSize}, {config.NumHiddenLayers} layers";
    }

    public string Source { get; }

    public IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public string PathOf(string name) => Source;

    /// <summary>Bytes of all tensors (what a checkpoint of this shape would hold).</summary>
    public long TotalBytes => _tensors.Values.Sum(t => t.ByteLength);

    public nint Data(string name, long offset, long bytes)
    {
        var info = Info(name);
        int size = _dtype.Size();
        if (offset < 0 || bytes < 0 || offset + bytes > info.ByteLength || offset % size != 0 || bytes % size != 0)
            throw new ArgumentOutOfRangeException(nameof(offset), $"bytes [{offset}, {offset + bytes}) are not elements of tensor {name} ({info.ByteLength} bytes)");
        var buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 64), 64);
        if (!_buffers.TryGetValue(name, out var list)) _buffers[name] = list = [];
        list.Add((nint)buffer);
        long first = offset / size, count = bytes / size;
        var kind = _kinds[name];
        Parallel.For(0, (count + Chunk - 1) / Chunk, c =>
        {
            long i0 = c * Chunk, i1 = Math.Min(count, i0 + Chunk);
            for (long i = i0; i < i1; i++)
            {
                float v = Value(kind.Stream, first + i, kind.Scale, kind.Norm);
                switch (_dtype)
                {
                    case DType.BF16: ((ushort*)buffer)[i] = DTypes.F32ToBF16(v); break;
                    case DType.F16: ((ushort*)buffer)[i] = DTypes.F32ToF16(v); break;
                    default: ((float*)buffer)[i] = v; break;
                }
            }
        });
        return (nint)buffer;
    }

    public float[] ReadF32(string name)
    {
        var info = Info(name);
        var kind = _kinds[name];
        var values = new float[info.ElementCount];
        for (long i = 0; i < values.Length; i++)
        {
            float v = Value(kind.Stream, i, kind.Scale, kind.Norm);
            values[i] = _dtype switch
            {
                DType.BF16 => DTypes.BF16ToF32(DTypes.F32ToBF16(v)),
                DType.F16 => DTypes.F16ToF32(DTypes.F32ToF16(v)),
                _ => v,
            };
        }
        return values;
    }

    public void Release(string name, bool kept)
    {
        if (kept || !_buffers.Remove(name, out var list)) return;
        foreach (var p in list) NativeMemory.AlignedFree((void*)p);
    }

    public void Dispose()
    {
        foreach (var list in _buffers.Values)
            foreach (var p in list) NativeMemory.AlignedFree((void*)p);
        _buffers.Clear();
    }

    private TensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var info) ? info : throw ModelFormatException.In(Source, $"tensor {SafeTensorsHeader.Quote(name)} not found");

    // Element i of tensor `stream`: a uniform u in [0, 1) from a splitmix64 hash, as a matrix weight (2u - 1) * scale
    // or a norm weight 1 + 0.1 (u - 0.5).
    private float Value(ulong stream, long i, float scale, bool norm)
    {
        ulong z = _seed * 0x9E3779B97F4A7C15UL + (stream << 40) + (ulong)i;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        float u = (z >> 40) * (1f / (1 << 24));
        return norm ? 1f + 0.1f * (u - 0.5f) : (2f * u - 1f) * scale;
    }
}

// Writes safetensors files (header padded with spaces to 8 bytes, as Hugging Face's writer does); tensors are streamed,
// so a checkpoint larger than memory can be produced. Used by tests and by benchmark tools writing random checkpoints.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>One tensor to write: its name, dtype name, shape, and a callback that writes exactly its bytes.</summary>
public sealed record SafeTensorsEntry(string Name, string DTypeName, long[] Shape, Action<Stream> WriteData)
{
    /// <summary>Size in bytes the entry must write: product(Shape) times the dtype size.</summary>
    public long ByteLength
    {
        get
        {
            int size = SafeTensorsHeader.DTypeSize(DTypeName);
            if (size == 0) throw new ArgumentException($"unknown safetensors dtype '{DTypeName}'", nameof(DTypeName));
            long n = size;
            foreach (long d in Shape)
            {
                ArgumentOutOfRangeException.ThrowIfNegative(d, nameof(Shape));
                n = checked(n * d);
            }
            return n;
        }
    }

    /// <summary>An entry whose bytes are given as is.</summary>
    public static SafeTensorsEntry FromBytes(string name, string dtypeName, long[] shape, byte[] data) =>
        new(name, dtypeName, shape, s => s.Write(data));

    /// <summary>An entry of float values stored as F32, F16 or BF16 (rounded to nearest even).</summary>
    public static SafeTensorsEntry FromFloats(string name, DType dtype, long[] shape, float[] values) =>
        new(name, dtype.Name(), shape, s => WriteFloats(s, dtype, values));

    /// <summary>An I64 entry.</summary>
    public static SafeTensorsEntry FromInt64(string name, long[] shape, long[] values) =>
        new(name, "I64", shape, s => s.Write(MemoryMarshal.AsBytes(values.AsSpan())));

    /// <summary>An entry of uniform random values in [-scale, scale], generated in chunks while writing (seeded, reproducible).</summary>
    public static SafeTensorsEntry Random(string name, DType dtype, long[] shape, int seed, float scale) =>
        new(name, dtype.Name(), shape, s =>
        {
            var rng = new Random(seed);
            long remaining = shape.Aggregate(1L, (a, b) => checked(a * b));
            var chunk = new float[Math.Min(remaining, 1 << 16)];
            while (remaining > 0)
            {
                int n = (int)Math.Min(remaining, chunk.Length);
                for (int i = 0; i < n; i++) chunk[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
                WriteFloats(s, dtype, chunk.AsSpan(0, n));
                remaining -= n;
            }
        });

    private static void WriteFloats(Stream s, DType dtype, ReadOnlySpan<float> values)
    {
        if (dtype == DType.F32)
        {
            s.Write(MemoryMarshal.AsBytes(values));
            return;
        }
        Span<byte> buf = stackalloc byte[4096];
        for (int i = 0; i < values.Length;)
        {
            int n = Math.Min(values.Length - i, buf.Length / 2);
            for (int j = 0; j < n; j++)
            {
                ushort bits = dtype == DType.BF16 ? DTypes.F32ToBF16(values[i + j]) : DTypes.F32ToF16(values[i + j]);
                BinaryPrimitives.WriteUInt16LittleEndian(buf[(2 * j)..], bits);
            }
            s.Write(buf[..(2 * n)]);
            i += n;
        }
    }
}

/// <summary>Writes safetensors files.</summary>
public static class SafeTensorsWriter
{
    /// <summary>Writes entries (grouped by element size, largest first, so every tensor is aligned to its element size) and optional metadata to path.</summary>
    public static void Write(string path, IEnumerable<SafeTensorsEntry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = entries.OrderByDescending(e => SafeTensorsHeader.DTypeSize(e.DTypeName)).ToArray(); // stable
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in list)
        {
            if (e.Name == "__metadata__" || !names.Add(e.Name))
                throw new ArgumentException($"tensor name '{e.Name}' is reserved or repeated", nameof(entries));
        }
        byte[] header = BuildHeader(list, metadata);
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        file.Write(len);
        file.Write(header);
        foreach (var e in list)
        {
            long start = file.Position;
            e.WriteData(file);
            long written = file.Position - start;
            if (written != e.ByteLength)
                throw new InvalidOperationException($"tensor '{e.Name}' wrote {written} bytes, its header says {e.ByteLength}");
        }
    }

    private static byte[] BuildHeader(SafeTensorsEntry[] entries, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in entries)
            {
                long bytes = e.ByteLength;
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.DTypeName);
                w.WriteStartArray("shape");
                foreach (long d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int padded = (int)((ms.Length + 7) / 8 * 8);
        while (ms.Length < padded) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }
}

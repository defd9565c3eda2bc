// Validating parser of a safetensors prefix: u64 header length, JSON header, tensor table checked against the data section.
// Pure (no I/O), so tests and the fuzz test feed it bytes directly: dotnet test --filter "SafeTensorsTests|LoaderFuzzTests".
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>One tensor of a safetensors file: dtype name as written, shape, and its byte range measured from the start of the file.</summary>
public sealed record TensorInfo(string Name, string DTypeName, long[] Shape, long ByteOffset, long ByteLength)
{
    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The weight dtype when DTypeName is F32, F16 or BF16, otherwise null.</summary>
    public DType? WeightDType => DTypeName switch { "F32" => DType.F32, "F16" => DType.F16, "BF16" => DType.BF16, _ => null };

    /// <summary>Shape as "[a, b]" for messages.</summary>
    public string ShapeText => SafeTensorsHeader.ShapeText(Shape);
}

/// <summary>The tensor table and metadata of a safetensors file, validated.</summary>
internal sealed record SafeTensorsLayout(
    Dictionary<string, TensorInfo> Tensors, Dictionary<string, string> Metadata, long DataStart, long DataLength);

internal static class SafeTensorsHeader
{
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    private static readonly Dictionary<string, int> DTypeSizes = new()
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2, ["I64"] = 8,
        ["I32"] = 4, ["I16"] = 2, ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1,
    };

    /// <summary>Size in bytes of one element of a known dtype name, or 0 when the name is unknown.</summary>
    public static int DTypeSize(string name) => DTypeSizes.GetValueOrDefault(name);

    /// <summary>
    /// Validates the header found at the start of a file of fileLength bytes; head holds the file's first bytes
    /// (at least 8 + header length of them when the file is that long).
    /// </summary>
    public static SafeTensorsLayout Parse(string path, ReadOnlySpan<byte> head, long fileLength)
    {
        if (fileLength < 8)
            throw ModelFormatException.In(path, $"not a safetensors file: {fileLength} bytes, expected at least 8 (header length)");
        ulong headerLength = BitConverter.ToUInt64(head[..8]);
        if (headerLength > (ulong)MaxHeaderBytes)
            throw ModelFormatException.In(path, $"header length {headerLength} exceeds the 100 MB limit");
        if (headerLength > (ulong)(fileLength - 8))
            throw ModelFormatException.In(path, $"header length {headerLength} exceeds the {fileLength - 8} bytes after the length field (truncated file?)");
        if (head.Length < 8 + (long)headerLength)
            throw new ArgumentException("head is shorter than the header", nameof(head));
        var json = head.Slice(8, (int)headerLength);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        if (!Utf8.IsValid(json))
            throw ModelFormatException.In(path, "header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            throw ModelFormatException.In(path, $"header is not valid JSON: {OneLine(ex.Message)}");
        }
        using (doc)
        {
            try
            {
                return ReadTable(path, doc.RootElement, dataStart, dataLength);
            }
            catch (InvalidOperationException ex)
            {
                // String values with invalid escapes (lone surrogates) surface here when read.
                throw ModelFormatException.In(path, $"header holds an unreadable string: {OneLine(ex.Message)}");
            }
        }
    }

    private static SafeTensorsLayout ReadTable(string path, JsonElement root, long dataStart, long dataLength)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.In(path, $"header must be a JSON object, got {Kind(root)}");
        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        bool sawMetadata = false;
        foreach (var prop in root.EnumerateObject())
        {
            string name = prop.Name;
            if (name == "__metadata__")
            {
                if (sawMetadata)
                    throw ModelFormatException.In(path, "duplicate key \"__metadata__\" in header");
                sawMetadata = true;
                ReadMetadata(path, prop.Value, metadata);
                continue;
            }
            if (tensors.ContainsKey(name))
                throw ModelFormatException.In(path, $"tensor {Quote(name)} is listed twice in the header");
            tensors.Add(name, ReadEntry(path, name, prop.Value, dataStart, dataLength));
        }
        CheckNoOverlap(path, tensors.Values);
        return new SafeTensorsLayout(tensors, metadata, dataStart, dataLength);
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.In(path, $"\"__metadata__\" must be an object of strings, got {Kind(value)}");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw ModelFormatException.In(path, $"\"__metadata__\" key {Quote(m.Name)} must be a string, got {Kind(m.Value)}");
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw ModelFormatException.In(path, $"\"__metadata__\" key {Quote(m.Name)} is listed twice");
        }
    }

    private static TensorInfo ReadEntry(string path, string name, JsonElement entry, long dataStart, long dataLength)
    {
        string where = $"tensor {Quote(name)}";
        if (entry.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.In(path, $"{where}: entry must be an object, got {Kind(entry)}");
        JsonElement? dtypeEl = null, shapeEl = null, offsetsEl = null;
        foreach (var field in entry.EnumerateObject())
        {
            ref JsonElement? slot = ref dtypeEl;
            switch (field.Name)
            {
                case "dtype": slot = ref dtypeEl; break;
                case "shape": slot = ref shapeEl; break;
                case "data_offsets": slot = ref offsetsEl; break;
                default: throw ModelFormatException.In(path, $"{where}: unknown key {Quote(field.Name)}, expected dtype, shape, data_offsets");
            }
            if (slot is not null)
                throw ModelFormatException.In(path, $"{where}: key \"{field.Name}\" is listed twice");
            slot = field.Value;
        }
        if (dtypeEl is not { } dt || shapeEl is not { } sh || offsetsEl is not { } off)
            throw ModelFormatException.In(path, $"{where}: entry needs dtype, shape and data_offsets");

        if (dt.ValueKind != JsonValueKind.String)
            throw ModelFormatException.In(path, $"{where}: dtype must be a string, got {Kind(dt)}");
        string dtype = dt.GetString()!;
        int elemSize = DTypeSize(dtype);
        if (elemSize == 0)
            throw ModelFormatException.In(path, $"{where}: unknown dtype {Quote(dtype)}, expected one of {string.Join(", ", DTypeSizes.Keys)}");

        long[] shape = ReadLongs(path, where, "shape", sh, -1);
        long elements = 1;
        foreach (long d in shape)
        {
            if (d != 0 && elements > long.MaxValue / d)
                throw ModelFormatException.In(path, $"{where}: shape {ShapeText(shape)} has too many elements");
            elements *= d;
        }
        if (elements > long.MaxValue / elemSize)
            throw ModelFormatException.In(path, $"{where}: shape {ShapeText(shape)} is too large for {dtype}");
        long expectedBytes = elements * elemSize;

        long[] range = ReadLongs(path, where, "data_offsets", off, 2);
        long begin = range[0], end = range[1];
        if (end < begin)
            throw ModelFormatException.In(path, $"{where}: data_offsets [{begin}, {end}] end before they begin");
        if (end - begin != expectedBytes)
            throw ModelFormatException.In(path, $"{where}: {dtype}{ShapeText(shape)} needs {expectedBytes} bytes, data_offsets [{begin}, {end}] give {end - begin}");
        if (end > dataLength)
            throw ModelFormatException.In(path, $"{where}: data_offsets [{begin}, {end}] run past the {dataLength}-byte data section (truncated file?)");
        return new TensorInfo(name, dtype, shape, dataStart + begin, expectedBytes);
    }

    private static long[] ReadLongs(string path, string where, string key, JsonElement el, int count)
    {
        if (el.ValueKind != JsonValueKind.Array)
            throw ModelFormatException.In(path, $"{where}: {key} must be an array of non-negative integers, got {Kind(el)}");
        int n = el.GetArrayLength();
        if (count >= 0 && n != count)
            throw ModelFormatException.In(path, $"{where}: {key} must hold {count} integers, got {n}");
        if (n > 64)
            throw ModelFormatException.In(path, $"{where}: {key} has {n} dimensions, at most 64 allowed");
        var values = new long[n];
        int i = 0;
        foreach (var v in el.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x) || x < 0)
                throw ModelFormatException.In(path, $"{where}: {key}[{i}] must be a non-negative integer, got {Describe(v)}");
            values[i++] = x;
        }
        return values;
    }

    private static void CheckNoOverlap(string path, IEnumerable<TensorInfo> tensors)
    {
        var sorted = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.ByteOffset).ToArray();
        for (int i = 1; i < sorted.Length; i++)
        {
            var a = sorted[i - 1];
            var b = sorted[i];
            if (b.ByteOffset < a.ByteOffset + a.ByteLength)
                throw ModelFormatException.In(path, $"tensors {Quote(a.Name)} and {Quote(b.Name)} overlap in the data section");
        }
    }

    public static string ShapeText(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>A name from a file, quoted, control characters escaped and cut to 120 characters, so messages stay one line.</summary>
    public static string Quote(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s.Length > 120 ? s[..120] : s)
        {
            if (char.IsControl(c) || char.IsSurrogate(c) || c == '"' || c == '\\') sb.Append($"\\u{(int)c:x4}");
            else sb.Append(c);
        }
        if (s.Length > 120) sb.Append("...");
        return sb.Append('"').ToString();
    }

    /// <summary>Text with control characters blanked and cut to 200 characters.</summary>
    public static string OneLine(string s) =>
        new((s.Length > 200 ? s[..200] + "..." : s).Select(c => char.IsControl(c) ? ' ' : c).ToArray());

    private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

    private static string Describe(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null => OneLine(e.GetRawText()),
        JsonValueKind.String => "string " + Quote(e.GetString()!),
        _ => Kind(e),
    };
}

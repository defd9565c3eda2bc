// One safetensors file, memory-mapped read-only; the header is validated (SafeTensorsHeader.cs) before any tensor is touched.
// Exercise: dotnet test tests/Tests.csproj --filter SafeTensorsTests
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>A memory-mapped, validated safetensors file; pointers stay valid until Dispose.</summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    private readonly SafeTensorsLayout _layout;
    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;

    private SafeTensorsFile(string path, long length, SafeTensorsLayout layout, MemoryMappedFile map,
        MemoryMappedViewAccessor view, byte* basePtr)
    {
        Path = path;
        FileLength = length;
        _layout = layout;
        _map = map;
        _view = view;
        _base = basePtr;
    }

    /// <summary>The path the file was opened with (used in every error message).</summary>
    public string Path { get; }

    /// <summary>Size of the file in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Tensors by name.</summary>
    public IReadOnlyDictionary<string, TensorInfo> Tensors => _layout.Tensors;

    /// <summary>The optional "__metadata__" string map.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _layout.Metadata;

    /// <summary>Maps and validates a safetensors file, or throws ModelFormatException naming the file and the problem.</summary>
    public static SafeTensorsFile Open(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw ModelFormatException.In(path, $"cannot open: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
        }
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* basePtr = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
                throw ModelFormatException.In(path, $"not a safetensors file: {length} bytes, expected at least 8 (header length)");
            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            basePtr += view.PointerOffset;
            long headLength = Math.Min(length, 8 + SafeTensorsHeader.MaxHeaderBytes);
            var layout = SafeTensorsHeader.Parse(path, new ReadOnlySpan<byte>(basePtr, (int)headLength), length);
            return new SafeTensorsFile(path, length, layout, map, view, basePtr);
        }
        catch (Exception ex)
        {
            if (basePtr != null) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map?.Dispose();
            stream.Dispose();
            if (ex is IOException or UnauthorizedAccessException)
                throw ModelFormatException.In(path, $"cannot map: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
            throw;
        }
    }

    /// <summary>The entry of tensor name, or ModelFormatException when the file has none.</summary>
    public TensorInfo Info(string name) =>
        _layout.Tensors.TryGetValue(name, out var info)
            ? info
            : throw ModelFormatException.In(Path, $"tensor {SafeTensorsHeader.Quote(name)} not found ({_layout.Tensors.Count} tensors in file)");

    /// <summary>Address of the first byte of tensor name inside the mapping.</summary>
    public nint DataPointer(string name)
    {
        var info = Info(name);
        return (nint)(Base + info.ByteOffset);
    }

    /// <summary>The raw bytes of tensor name (at most 2 GiB; use DataPointer beyond that).</summary>
    public ReadOnlySpan<byte> Bytes(string name)
    {
        var info = Info(name);
        if (info.ByteLength > int.MaxValue)
            throw ModelFormatException.In(Path, $"tensor {SafeTensorsHeader.Quote(name)} is {info.ByteLength} bytes, too large for a span");
        return new ReadOnlySpan<byte>(Base + info.ByteOffset, (int)info.ByteLength);
    }

    /// <summary>Tensor name as float32 values, converted from F32, F16 or BF16.</summary>
    public float[] ReadF32(string name) => ToF32(Path, Info(name), Bytes(name));

    /// <summary>Tensor name as int64 values, widened from I64, I32, I16, I8 or U8.</summary>
    public long[] ReadI64(string name) => ToI64(Path, Info(name), Bytes(name));

    private byte* Base => _base != null ? _base : throw new ObjectDisposedException(Path);

    internal static float[] ToF32(string path, TensorInfo info, ReadOnlySpan<byte> bytes)
    {
        var result = new float[info.ElementCount];
        switch (info.DTypeName)
        {
            case "F32":
                MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result);
                break;
            case "F16":
                var h = MemoryMarshal.Cast<byte, ushort>(bytes);
                for (int i = 0; i < h.Length; i++) result[i] = DTypes.F16ToF32(h[i]);
                break;
            case "BF16":
                var b = MemoryMarshal.Cast<byte, ushort>(bytes);
                for (int i = 0; i < b.Length; i++) result[i] = DTypes.BF16ToF32(b[i]);
                break;
            default:
                throw ModelFormatException.In(path, $"tensor {SafeTensorsHeader.Quote(info.Name)}: expected dtype F32, F16 or BF16, got {info.DTypeName}");
        }
        return result;
    }

    internal static long[] ToI64(string path, TensorInfo info, ReadOnlySpan<byte> bytes)
    {
        var result = new long[info.ElementCount];
        switch (info.DTypeName)
        {
            case "I64": MemoryMarshal.Cast<byte, long>(bytes).CopyTo(result); break;
            case "I32": Widen(MemoryMarshal.Cast<byte, int>(bytes), result, v => v); break;
            case "I16": Widen(MemoryMarshal.Cast<byte, short>(bytes), result, v => v); break;
            case "I8": Widen(MemoryMarshal.Cast<byte, sbyte>(bytes), result, v => v); break;
            case "U8": Widen(bytes, result, v => v); break;
            default:
                throw ModelFormatException.In(path, $"tensor {SafeTensorsHeader.Quote(info.Name)}: expected an integer dtype (I64, I32, I16, I8, U8), got {info.DTypeName}");
        }
        return result;
    }

    private static void Widen<T>(ReadOnlySpan<T> src, long[] dst, Func<T, long> widen)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = widen(src[i]);
    }

    /// <summary>Unmaps the file; pointers and spans handed out before become invalid.</summary>
    public void Dispose()
    {
        if (_base == null) return;
        _base = null;
        _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map!.Dispose();
        _view = null;
        _map = null;
    }
}

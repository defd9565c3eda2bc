// A Hugging Face checkpoint directory: model.safetensors, or shards listed by model.safetensors.index.json ("weight_map").
// Exercise: dotnet test tests/Tests.csproj --filter SafeTensorsTests
using System.Text.Json;

using LlamaRun.Core;
namespace LlamaRun.Model;

/// <summary>All tensors of a checkpoint (one file or index-listed shards), memory-mapped until Dispose.</summary>
public sealed class Checkpoint : IWeightSource
{
    /// <summary>Name of the single-file checkpoint inside a model directory.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>Name of the shard index inside a model directory.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, SafeTensorsFile> _owner;
    private readonly SafeTensorsFile[] _files;

    private Checkpoint(string source, SafeTensorsFile[] files, Dictionary<string, SafeTensorsFile> owner)
    {
        Source = source;
        _files = files;
        _owner = owner;
        Tensors = owner.ToDictionary(kv => kv.Key, kv => kv.Value.Tensors[kv.Key], StringComparer.Ordinal);
    }

    /// <summary>The index file or the single safetensors file this checkpoint was opened from.</summary>
    public string Source { get; }

    /// <summary>The mapped files, in index order.</summary>
    public IReadOnlyList<SafeTensorsFile> Files => _files;

    /// <summary>Every tensor of every file by name.</summary>
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    /// <summary>Opens a model directory (index or single file) or a .safetensors file path.</summary>
    public static Checkpoint Open(string dirOrFile)
    {
        if (File.Exists(dirOrFile))
            return OpenSingle(dirOrFile);
        if (!Directory.Exists(dirOrFile))
            throw ModelFormatException.In(dirOrFile, "no such model directory or safetensors file");
        string index = System.IO.Path.Combine(dirOrFile, IndexFileName);
        if (File.Exists(index))
            return OpenSharded(index);
        string single = System.IO.Path.Combine(dirOrFile, SingleFileName);
        if (File.Exists(single))
            return OpenSingle(single);
        throw ModelFormatException.In(dirOrFile, $"directory holds neither {SingleFileName} nor {IndexFileName}");
    }

    private static Checkpoint OpenSingle(string path)
    {
        var file = SafeTensorsFile.Open(path);
        return new Checkpoint(path, [file], file.Tensors.Keys.ToDictionary(k => k, _ => file, StringComparer.Ordinal));
    }

    private static Checkpoint OpenSharded(string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        string dir = System.IO.Path.GetDirectoryName(indexPath) ?? ".";
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).ToArray();
        var files = new List<SafeTensorsFile>();
        try
        {
            foreach (var shard in shardNames)
            {
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                    throw ModelFormatException.In(indexPath, $"shard {SafeTensorsHeader.Quote(shard)} listed in weight_map does not exist (expected {shardPath})");
                files.Add(SafeTensorsFile.Open(shardPath));
            }
            var byName = shardNames.Zip(files).ToDictionary(p => p.First, p => p.Second, StringComparer.Ordinal);
            var owner = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            foreach (var (tensor, shard) in weightMap)
            {
                var file = byName[shard];
                if (!file.Tensors.ContainsKey(tensor))
                    throw ModelFormatException.In(file.Path, $"tensor {SafeTensorsHeader.Quote(tensor)} mapped to this shard by {IndexFileName} is not in it");
                owner.Add(tensor, file);
            }
            foreach (var file in files)
                foreach (var tensor in file.Tensors.Keys)
                    if (!owner.TryGetValue(tensor, out var mapped) || mapped != file)
                        throw ModelFormatException.In(file.Path, $"tensor {SafeTensorsHeader.Quote(tensor)} is in this shard but {IndexFileName} does not map it here");
            return new Checkpoint(indexPath, files.ToArray(), owner);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        byte[] bytes;
        try
        {
            var info = new FileInfo(indexPath);
            if (info.Length > SafeTensorsHeader.MaxHeaderBytes)
                throw ModelFormatException.In(indexPath, $"index is {info.Length} bytes, over the 100 MB limit");
            bytes = File.ReadAllBytes(indexPath);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw ModelFormatException.In(indexPath, $"cannot read: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
        }
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw ModelFormatException.In(indexPath, $"index must be a JSON object, got {root.ValueKind}");
            if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw ModelFormatException.In(indexPath, "index needs a \"weight_map\" object of tensor name -> shard file");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw ModelFormatException.In(indexPath, $"weight_map[{SafeTensorsHeader.Quote(p.Name)}] must be a shard file name, got {p.Value.ValueKind}");
                string shard = p.Value.GetString()!;
                if (shard.Length == 0 || shard.Contains('/') || shard.Contains('\\') || shard is "." or ".." || shard.Contains('\0'))
                    throw ModelFormatException.In(indexPath, $"weight_map[{SafeTensorsHeader.Quote(p.Name)}] = {SafeTensorsHeader.Quote(shard)} is not a plain file name");
                if (!result.TryAdd(p.Name, shard))
                    throw ModelFormatException.In(indexPath, $"weight_map lists tensor {SafeTensorsHeader.Quote(p.Name)} twice");
            }
            if (result.Count == 0)
                throw ModelFormatException.In(indexPath, "weight_map is empty");
            return result;
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            throw ModelFormatException.In(indexPath, $"index is not valid JSON: {SafeTensorsHeader.OneLine(ex.Message)}", ex);
        }
    }

    /// <summary>The file holding tensor name.</summary>
    public SafeTensorsFile FileOf(string name) =>
        _owner.TryGetValue(name, out var f)
            ? f
            : throw ModelFormatException.In(Source, $"tensor {SafeTensorsHeader.Quote(name)} not found in checkpoint");

    /// <summary>Entry of tensor name.</summary>
    public TensorInfo Info(string name) => FileOf(name).Info(name);

    /// <summary>Address of tensor name's first byte in its mapped file.</summary>
    public nint DataPointer(string name) => FileOf(name).DataPointer(name);

    public string PathOf(string name) => FileOf(name).Path;

    /// <summary>Bytes [offset, offset + bytes) of tensor name in its mapped file (valid as long as the checkpoint).</summary>
    public nint Data(string name, long offset, long bytes)
    {
        var info = Info(name);
        if (offset < 0 || bytes < 0 || offset + bytes > info.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"bytes [{offset}, {offset + bytes}) outside tensor {name} of {info.ByteLength}");
        return DataPointer(name) + (nint)offset;
    }

    /// <summary>Nothing to release: the mapping lives until Dispose.</summary>
    public void Release(string name, bool kept)
    {
    }

    /// <summary>Raw bytes of tensor name.</summary>
    public ReadOnlySpan<byte> Bytes(string name) => FileOf(name).Bytes(name);

    /// <summary>Tensor name converted to float32.</summary>
    public float[] ReadF32(string name) => FileOf(name).ReadF32(name);

    /// <summary>Tensor name widened to int64.</summary>
    public long[] ReadI64(string name) => FileOf(name).ReadI64(name);

    /// <summary>Unmaps every file.</summary>
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}

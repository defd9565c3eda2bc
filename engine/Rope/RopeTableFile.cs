// A RopeTable as a small JSON file (written by `rope-opt --out`, read by `llama-run --rope-table FILE`):
// {"format":"llama-run-rope-table","version":1,"method":..,"factor":..,"interpolated_pairs":..,"magnitude":..,
//  "query_scale":{"context":..,"skip_layers":..} or null,"inv_freq":[..]}, and for an index remap (Self-Extend, DPE,
//  ReRoPE) "remap":{"kind":..,"window":..,"floor":true|false,"group":[.. per pair, "inf" for ReRoPE's]}, with DPE's key
//  dimensions "key_dims":{"layers":L,"kv_heads":H,"selected":[[pair, ..] for each layer and KV head, layer-major]}.
// Errors name the file (ModelFormatException).
using System.Text.Json;
using LlamaRun.Core;
using LlamaRun.Model;

namespace LlamaRun.Rope;

/// <summary>Saves and loads RoPE tables as JSON.</summary>
public static class RopeTableFile
{
    /// <summary>The value of the "format" member.</summary>
    public const string Format = "llama-run-rope-table";

    /// <summary>Writes the table to path (floats round-trip exactly).</summary>
    public static void Save(RopeTable table, string path)
    {
        using var stream = File.Create(path);
        Write(table, stream);
    }

    /// <summary>Writes the table as indented JSON to a stream.</summary>
    public static void Write(RopeTable table, Stream stream)
    {
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteString("format", Format);
        w.WriteNumber("version", 1);
        w.WriteString("method", table.Method);
        w.WriteNumber("factor", table.Factor);
        w.WriteNumber("interpolated_pairs", table.InterpolatedPairs);
        w.WriteNumber("magnitude", table.Magnitude);
        if (table.QueryScale is { } q)
        {
            w.WriteStartObject("query_scale");
            w.WriteNumber("context", q.Context);
            w.WriteNumber("skip_layers", q.SkipLayers);
            w.WriteEndObject();
        }
        else w.WriteNull("query_scale");
        w.WriteStartArray("inv_freq");
        foreach (float f in table.InvFreq) w.WriteNumberValue(f);
        w.WriteEndArray();
        if (table.Remap is { } r)
        {
            w.WriteStartObject("remap");
            w.WriteString("kind", r.Kind);
            w.WriteNumber("window", r.Window);
            w.WriteBoolean("floor", r.Floor);
            w.WriteStartArray("group");
            foreach (float g in r.Group)
                if (float.IsPositiveInfinity(g)) w.WriteStringValue("inf");
                else w.WriteNumberValue(g);
            w.WriteEndArray();
            if (r.KeyDims is { } kd)
            {
                w.WriteStartObject("key_dims");
                w.WriteNumber("layers", kd.Layers);
                w.WriteNumber("kv_heads", kd.KvHeads);
                w.WriteStartArray("selected");
                for (int l = 0; l < kd.Layers; l++)
                    for (int h = 0; h < kd.KvHeads; h++)
                    {
                        w.WriteStartArray();
                        foreach (int j in kd.SelectedPairs(l, h)) w.WriteNumberValue(j);
                        w.WriteEndArray();
                    }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    /// <summary>Reads a table; expectedRotaryDim, when given, must equal 2 * inv_freq length.</summary>
    public static RopeTable Load(string path, int? expectedRotaryDim = null)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        { throw ModelFormatException.In(path, $"cannot read RoPE table: {e.Message}", e); }
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            var table = Parse(path, doc.RootElement);
            if (expectedRotaryDim is { } d && table.RotaryDim != d)
                throw ModelFormatException.In(path, $"inv_freq has {table.InvFreq.Length} pairs, the model's rotary dim {d} needs {d / 2}");
            return table;
        }
        catch (JsonException e) { throw ModelFormatException.In(path, $"not valid JSON: {e.Message}", e); }
        catch (FormatException e) { throw ModelFormatException.In(path, $"a number is out of range: {e.Message}", e); }
    }

    private static RopeTable Parse(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw ModelFormatException.In(path, "expected a JSON object");
        if (Get(path, root, "format", JsonValueKind.String).GetString() != Format)
            throw ModelFormatException.In(path, $"\"format\" is not \"{Format}\"");
        if (Get(path, root, "version", JsonValueKind.Number).GetInt32() != 1)
            throw ModelFormatException.In(path, "unsupported \"version\" (expected 1)");
        var arr = Get(path, root, "inv_freq", JsonValueKind.Array);
        var inv = new float[arr.GetArrayLength()];
        if (inv.Length == 0) throw ModelFormatException.In(path, "\"inv_freq\" is empty");
        int i = 0;
        foreach (var e in arr.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetSingle(out float f) || !float.IsFinite(f) || f < 0)
                throw ModelFormatException.In(path, $"inv_freq[{i}] is not a finite non-negative number");
            inv[i++] = f;
        }
        float magnitude = Get(path, root, "magnitude", JsonValueKind.Number).GetSingle();
        if (!float.IsFinite(magnitude) || magnitude <= 0) throw ModelFormatException.In(path, "\"magnitude\" must be positive");
        double factor = Get(path, root, "factor", JsonValueKind.Number).GetDouble();
        if (!double.IsFinite(factor) || factor <= 0) throw ModelFormatException.In(path, "\"factor\" must be positive");
        QueryScale? q = null;
        if (root.TryGetProperty("query_scale", out var qs) && qs.ValueKind != JsonValueKind.Null)
        {
            if (qs.ValueKind != JsonValueKind.Object) throw ModelFormatException.In(path, "\"query_scale\" must be an object or null");
            float context = Get(path, qs, "context", JsonValueKind.Number).GetSingle();
            int skip = Get(path, qs, "skip_layers", JsonValueKind.Number).GetInt32();
            if (!(context > 1) || skip < 0) throw ModelFormatException.In(path, "\"query_scale\" needs context > 1 and skip_layers >= 0");
            q = new QueryScale(context, skip);
        }
        RopeRemap? remap = null;
        if (root.TryGetProperty("remap", out var rm) && rm.ValueKind != JsonValueKind.Null)
        {
            if (rm.ValueKind != JsonValueKind.Object) throw ModelFormatException.In(path, "\"remap\" must be an object or null");
            string kind = Get(path, rm, "kind", JsonValueKind.String).GetString()!;
            int window = Get(path, rm, "window", JsonValueKind.Number).GetInt32();
            if (window < 1) throw ModelFormatException.In(path, "\"remap\".window must be at least 1");
            bool floor = !rm.TryGetProperty("floor", out var fl) || fl.ValueKind != JsonValueKind.False;
            var garr = Get(path, rm, "group", JsonValueKind.Array);
            if (garr.GetArrayLength() != inv.Length)
                throw ModelFormatException.In(path, $"\"remap\".group has {garr.GetArrayLength()} entries, inv_freq {inv.Length}");
            var group = new float[inv.Length];
            int g = 0;
            foreach (var e in garr.EnumerateArray())
            {
                if (e.ValueKind == JsonValueKind.String && e.GetString() == "inf") group[g] = float.PositiveInfinity;
                else if (e.ValueKind == JsonValueKind.Number && e.TryGetSingle(out float v) && v >= 1 && float.IsFinite(v)) group[g] = v;
                else throw ModelFormatException.In(path, $"\"remap\".group[{g}] must be a number of at least 1 or \"inf\"");
                g++;
            }
            try { remap = new RopeRemap(kind, window, group, floor); }
            catch (ArgumentException e) { throw ModelFormatException.In(path, "\"remap\": " + e.Message); }
            if (rm.TryGetProperty("key_dims", out var kd) && kd.ValueKind != JsonValueKind.Null) remap = remap.WithKeyDims(ParseKeyDims(path, kd, inv.Length));
        }
        return new RopeTable
        {
            Method = Get(path, root, "method", JsonValueKind.String).GetString()!,
            InvFreq = inv, Magnitude = magnitude, Factor = factor, QueryScale = q, Remap = remap,
            InterpolatedPairs = root.TryGetProperty("interpolated_pairs", out var ip) && ip.ValueKind == JsonValueKind.Number ? ip.GetInt32() : 0,
        };
    }

    private static RopeKeyDims ParseKeyDims(string path, JsonElement kd, int pairs)
    {
        if (kd.ValueKind != JsonValueKind.Object) throw ModelFormatException.In(path, "\"key_dims\" must be an object or null");
        int layers = Get(path, kd, "layers", JsonValueKind.Number).GetInt32(), heads = Get(path, kd, "kv_heads", JsonValueKind.Number).GetInt32();
        if (layers < 1 || heads < 1) throw ModelFormatException.In(path, "\"key_dims\" needs layers and kv_heads of at least 1");
        var lists = Get(path, kd, "selected", JsonValueKind.Array);
        if (lists.GetArrayLength() != layers * heads)
            throw ModelFormatException.In(path, $"\"key_dims\".selected has {lists.GetArrayLength()} lists, {layers} layers x {heads} KV heads need {layers * heads}");
        var selected = new bool[layers * heads * pairs];
        int row = 0;
        foreach (var list in lists.EnumerateArray())
        {
            if (list.ValueKind != JsonValueKind.Array) throw ModelFormatException.In(path, $"\"key_dims\".selected[{row}] must be an array of pair indices");
            foreach (var e in list.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int j) || (uint)j >= (uint)pairs)
                    throw ModelFormatException.In(path, $"\"key_dims\".selected[{row}] has an entry that is not a pair index below {pairs}");
                if (selected[row * pairs + j]) throw ModelFormatException.In(path, $"\"key_dims\".selected[{row}] lists pair {j} twice");
                selected[row * pairs + j] = true;
            }
            row++;
        }
        return new RopeKeyDims(layers, heads, pairs, selected);
    }

    private static JsonElement Get(string path, JsonElement obj, string name, JsonValueKind kind)
    {
        if (!obj.TryGetProperty(name, out var v)) throw ModelFormatException.In(path, $"missing \"{name}\"");
        if (v.ValueKind != kind) throw ModelFormatException.In(path, $"\"{name}\" must be a {kind.ToString().ToLowerInvariant()}");
        return v;
    }
}

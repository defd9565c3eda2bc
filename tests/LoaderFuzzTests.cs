// Property tests: valid safetensors headers, shard indexes and config.json files mutated thousands of times (seeded) must
// either load consistently or throw a one-line ModelFormatException; any other exception, crash or hang fails.
// Run: dotnet test tests/Tests.csproj --filter LoaderFuzzTests
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using LlamaRun.Core;
using LlamaRun.Model;
using Xunit;
using Xunit.Abstractions;
using static LlamaRun.Tests.LoaderTestSupport;

namespace LlamaRun.Tests;

public class LoaderFuzzTests(ITestOutputHelper output)
{
    private static readonly string[] Numbers =
    [
        "0", "1", "-1", "2", "4", "7", "8", "255", "4096", "65536", "2147483647", "2147483648", "4294967296",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999999",
        "1e3", "1.5", "-0", "1e400", "0.0",
    ];

    private static readonly string[] Tokens =
    [
        "\"F32\"", "\"BF16\"", "\"F16\"", "\"I64\"", "\"U8\"", "\"BOOL\"", "\"Q4\"", "\"\"", "\"dtype\"", "\"shape\"",
        "\"data_offsets\"", "\"__metadata__\"", "null", "true", "[]", "{}", "[0,0]", ",", ":", "[", "]", "{", "}",
        "\"\\ud800\"", "\"\\u0000\"", "\"\u00e9\"", "\"a\":", "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},",
    ];

    // LLAMARUN_FUZZ_SCALE=10 runs ten times the iterations (same seeds, longer sequences) for a deeper search.
    private static readonly int Scale = int.TryParse(Environment.GetEnvironmentVariable("LLAMARUN_FUZZ_SCALE"), out int s) && s > 0 ? s : 1;

    private const string Interesting = "{}[]\":,0123456789-.eE \\tfnu";

    // Runs body on a worker and fails (instead of hanging) if it takes longer than limit.
    private static void Bounded(TimeSpan limit, Action body)
    {
        var task = Task.Run(body);
        Assert.True(((IAsyncResult)task).AsyncWaitHandle.WaitOne(limit), $"fuzz loop did not finish within {limit.TotalSeconds} s (hang?)");
        task.GetAwaiter().GetResult();   // rethrows the loop's own failure, unwrapped
    }

    private static byte[] Mutate(Random rng, byte[] original)
    {
        ulong len = BinaryPrimitives.ReadUInt64LittleEndian(original);
        var header = Encoding.Latin1.GetString(original, 8, (int)len);   // byte-preserving
        var data = original.AsSpan(8 + (int)len).ToArray();
        ulong? lengthField = null;
        int edits = 1 + rng.Next(3);
        for (int e = 0; e < edits; e++)
        {
            switch (rng.Next(9))
            {
                case 0: // flip a bit
                    if (header.Length > 0) header = SetChar(header, rng.Next(header.Length), (char)(header[rng.Next(header.Length)] ^ (1 << rng.Next(8))));
                    break;
                case 1: // set a byte to a JSON-significant or random value
                    if (header.Length > 0)
                        header = SetChar(header, rng.Next(header.Length), rng.Next(2) == 0 ? Interesting[rng.Next(Interesting.Length)] : (char)rng.Next(256));
                    break;
                case 2: // delete a segment
                    if (header.Length > 1) { int a = rng.Next(header.Length), n = rng.Next(1, Math.Min(40, header.Length - a) + 1); header = header.Remove(a, n); }
                    break;
                case 3: // splice: copy a segment somewhere else
                    if (header.Length > 1)
                    {
                        int a = rng.Next(header.Length), n = rng.Next(1, Math.Min(80, header.Length - a) + 1);
                        header = header.Insert(rng.Next(header.Length + 1), header.Substring(a, n));
                    }
                    break;
                case 4: // change a number
                    var digits = System.Text.RegularExpressions.Regex.Matches(header, "-?[0-9]+");
                    if (digits.Count > 0)
                    {
                        var m = digits[rng.Next(digits.Count)];
                        header = header.Remove(m.Index, m.Length).Insert(m.Index, Numbers[rng.Next(Numbers.Length)]);
                    }
                    break;
                case 5: // replace a JSON string token or insert a token
                    var strings = System.Text.RegularExpressions.Regex.Matches(header, "\"[^\"]*\"");
                    string tok = Tokens[rng.Next(Tokens.Length)];
                    if (strings.Count > 0 && rng.Next(2) == 0)
                    {
                        var m = strings[rng.Next(strings.Count)];
                        header = header.Remove(m.Index, m.Length).Insert(m.Index, tok);
                    }
                    else header = header.Insert(rng.Next(header.Length + 1), tok);
                    break;
                case 6: // truncate the file (header or data)
                    int total = 8 + header.Length + data.Length;
                    int keep = rng.Next(total);
                    if (keep < 8 + header.Length) { header = header[..Math.Max(0, keep - 8)]; data = []; lengthField ??= len; }
                    else data = data[..(keep - 8 - header.Length)];
                    break;
                case 7: // lie in the length field
                    lengthField = rng.Next(3) switch
                    {
                        0 => (ulong)Math.Max(0, header.Length + rng.Next(-16, 17)),
                        1 => (ulong)rng.NextInt64(),
                        _ => (ulong)(header.Length + data.Length + rng.Next(0, 3)),
                    };
                    break;
                default: // grow or shrink the data section
                    data = rng.Next(2) == 0 ? data[..rng.Next(data.Length + 1)] : [.. data, .. new byte[rng.Next(1, 64)]];
                    break;
            }
        }
        var h = Encoding.Latin1.GetBytes(header);
        var result = new byte[Math.Max(8 + h.Length + data.Length, 0)];
        BinaryPrimitives.WriteUInt64LittleEndian(result, lengthField ?? (ulong)h.Length);
        h.CopyTo(result, 8);
        data.CopyTo(result, 8 + h.Length);
        if (rng.Next(50) == 0) return result[..rng.Next(Math.Min(result.Length, 12))];   // very short files
        return result;
    }

    private static string SetChar(string s, int i, char c) => string.Concat(s.AsSpan(0, i), c.ToString(), s.AsSpan(i + 1));

    // A successfully parsed table must satisfy every invariant the reader promises, and reading each tensor must work.
    private static void CheckConsistent(SafeTensorsLayout layout, ReadOnlySpan<byte> file)
    {
        var again = SafeTensorsHeader.Parse("fuzz", file, file.Length);
        Assert.Equal(layout.Tensors.Keys.Order(), again.Tensors.Keys.Order());
        var sorted = layout.Tensors.Values.OrderBy(t => t.ByteOffset).ToArray();
        long prevEnd = layout.DataStart;
        foreach (var t in sorted)
        {
            int size = SafeTensorsHeader.DTypeSize(t.DTypeName);
            Assert.True(size > 0);
            Assert.Equal(t.ElementCount * size, t.ByteLength);
            Assert.True(t.ByteOffset >= layout.DataStart && t.ByteOffset + t.ByteLength <= file.Length);
            if (t.ByteLength > 0) { Assert.True(t.ByteOffset >= prevEnd); prevEnd = t.ByteOffset + t.ByteLength; }
            Assert.Equal(again.Tensors[t.Name], t with { Shape = again.Tensors[t.Name].Shape });
            var bytes = file.Slice((int)t.ByteOffset, (int)t.ByteLength);
            if (t.WeightDType is not null) Assert.Equal(t.ElementCount, SafeTensorsFile.ToF32("fuzz", t, bytes).Length);
            else if (t.DTypeName is "I64" or "I32" or "I16" or "I8" or "U8") Assert.Equal(t.ElementCount, SafeTensorsFile.ToI64("fuzz", t, bytes).Length);
        }
    }

    private static void AssertOneLine(ModelFormatException ex, string path)
    {
        Assert.DoesNotContain('\n', ex.Message);
        Assert.StartsWith(path + ":", ex.Message);
    }

    private static byte[][] Templates()
    {
        using var dir = new LoaderTempDir();
        string p = dir.File("t.safetensors");
        SafeTensorsWriter.Write(p,
        [
            SafeTensorsEntry.FromFloats("a.weight", DType.F32, [2, 3], [1, 2, 3, 4, 5, 6]),
            SafeTensorsEntry.FromFloats("b", DType.BF16, [4], [1, 2, 3, 4]),
            SafeTensorsEntry.FromFloats("c", DType.F16, [], [7]),
            SafeTensorsEntry.FromInt64("ids", [3], [1, 2, 3]),
            SafeTensorsEntry.FromBytes("mask", "BOOL", [2, 0], []),
            SafeTensorsEntry.FromBytes("u", "U8", [5], [1, 2, 3, 4, 5]),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        // A Llama-named checkpoint with tiny shapes (real tensor names, small data so each iteration stays cheap).
        string q = dir.File("llama.safetensors");
        var entries = new List<SafeTensorsEntry> { SafeTensorsEntry.Random("model.embed_tokens.weight", DType.BF16, [6, 4], 1, 1) };
        for (int l = 0; l < 2; l++)
            foreach (var (n, shape) in new (string, long[])[] { ("input_layernorm", [4]), ("self_attn.q_proj", [4, 4]), ("self_attn.k_proj", [2, 4]),
                ("mlp.down_proj", [4, 3]), ("post_attention_layernorm", [4]) })
                entries.Add(SafeTensorsEntry.Random($"model.layers.{l}.{n}.weight", l == 0 ? DType.BF16 : DType.F32, shape, l, 1));
        SafeTensorsWriter.Write(q, entries, new Dictionary<string, string> { ["format"] = "pt" });
        return [File.ReadAllBytes(p), File.ReadAllBytes(q)];
    }

    [Fact]
    public void MutatedSafeTensorsHeadersLoadOrFailCleanly()
    {
        var templates = Templates();
        int loaded = 0, refused = 0, viaFile = 0;
        var sw = Stopwatch.StartNew();
        Bounded(TimeSpan.FromSeconds(60 * Scale), () =>
        {
            var rng = new Random(12345);
            using var dir = new LoaderTempDir();
            for (int i = 0; i < 10000 * Scale; i++)
            {
                var original = templates[i % templates.Length];
                var bytes = Mutate(rng, original);
                try
                {
                    SafeTensorsLayout layout;
                    try
                    {
                        layout = SafeTensorsHeader.Parse("fuzz", bytes, bytes.Length);
                    }
                    catch (ModelFormatException ex)
                    {
                        AssertOneLine(ex, "fuzz");
                        refused++;
                        layout = null!;
                    }
                    if (layout is not null) { CheckConsistent(layout, bytes); loaded++; }
                    if (i % 20 == 0)   // the real path: file, mmap, spans
                    {
                        viaFile++;
                        string path = dir.Write($"f{i % 7}.safetensors", bytes);
                        try
                        {
                            using var st = SafeTensorsFile.Open(path);
                            Assert.NotNull(layout);
                            Assert.Equal(layout.Tensors.Keys.Order(), st.Tensors.Keys.Order());
                            foreach (var t in st.Tensors.Values)
                            {
                                Assert.Equal(t.ByteLength, st.Bytes(t.Name).Length);
                                if (t.WeightDType is not null) st.ReadF32(t.Name);
                            }
                        }
                        catch (ModelFormatException ex)
                        {
                            Assert.Null(layout);
                            AssertOneLine(ex, path);
                        }
                    }
                }
                catch (Exception ex) when (ex is not ModelFormatException)
                {
                    throw new Xunit.Sdk.XunitException($"iteration {i}: {ex.GetType().Name}: {ex.Message}\nheader: " +
                        Encoding.Latin1.GetString(bytes, 8, Math.Min(bytes.Length - 8, 600)));
                }
            }
        });
        output.WriteLine($"{loaded} loaded, {refused} refused, {viaFile} through files, {sw.ElapsedMilliseconds} ms");
        Assert.True(loaded > 300 && refused > 3000, $"mutations should both keep and break files: {loaded} loaded, {refused} refused");
    }

    [Fact]
    public void MutatedConfigsParseOrFailCleanly()
    {
        var sources = HfTinyVariants.SelectMany(v => Directory.GetFiles(Path.Combine(HfTiny, v), "config*.json"))
            .Append(Path.Combine(RepoRoot, "models", "austen", "config.json"))
            .Select(File.ReadAllBytes).ToArray();
        int parsed = 0, refused = 0;
        Bounded(TimeSpan.FromSeconds(60 * Scale), () =>
        {
            var rng = new Random(777);
            for (int i = 0; i < 4000 * Scale; i++)
            {
                // Reuse the header mutator by wrapping the JSON as a header-only file.
                var src = sources[i % sources.Length];
                var wrapped = new byte[8 + src.Length];
                BinaryPrimitives.WriteUInt64LittleEndian(wrapped, (ulong)src.Length);
                src.CopyTo(wrapped, 8);
                var m = Mutate(rng, wrapped);
                var json = m.Length > 8 ? m.AsSpan(8) : [];
                try
                {
                    var c = LlamaConfigReader.Parse("config.json", json);
                    Assert.True(c.HiddenSize > 0 && c.NumAttentionHeads % c.NumKeyValueHeads == 0 && c.HeadDim > 0 && c.RotaryDim % 2 == 0);
                    parsed++;
                }
                catch (ModelFormatException ex)
                {
                    AssertOneLine(ex, "config.json");
                    refused++;
                }
                catch (Exception ex)
                {
                    throw new Xunit.Sdk.XunitException($"iteration {i}: {ex.GetType().Name}: {ex.Message}\n{Encoding.Latin1.GetString(json)}");
                }
            }
        });
        output.WriteLine($"configs: {parsed} parsed, {refused} refused");
        Assert.True(parsed > 200 && refused > 1000, $"{parsed} parsed, {refused} refused");
    }

    [Fact]
    public void MutatedShardIndexesLoadOrFailCleanly()
    {
        using var dir = new LoaderTempDir();
        SafeTensorsWriter.Write(dir.File("s1.safetensors"), [SafeTensorsEntry.FromFloats("a", DType.F32, [2], [1, 2])]);
        SafeTensorsWriter.Write(dir.File("s2.safetensors"), [SafeTensorsEntry.FromFloats("b", DType.F32, [1], [3])]);
        var index = Encoding.UTF8.GetBytes("{\"metadata\":{\"total_size\":12},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
        var wrapped = new byte[8 + index.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(wrapped, (ulong)index.Length);
        index.CopyTo(wrapped, 8);
        int opened = 0;
        Bounded(TimeSpan.FromSeconds(60 * Scale), () =>
        {
            var rng = new Random(99);
            string path = dir.File(Checkpoint.IndexFileName);
            for (int i = 0; i < 400 * Scale; i++)
            {
                var m = Mutate(rng, wrapped);
                File.WriteAllBytes(path, m.Length > 8 ? m[8..] : []);
                try
                {
                    using var ck = Checkpoint.Open(dir.Path);
                    // Shards the index does not name are not opened, so a mutated map may legally drop a tensor.
                    Assert.NotEmpty(ck.Tensors);
                    foreach (var name in ck.Tensors.Keys)
                        Assert.Equal(name == "a" ? [1f, 2f] : name == "b" ? [3f] : null, ck.ReadF32(name));
                    opened++;
                }
                catch (ModelFormatException ex)
                {
                    Assert.DoesNotContain('\n', ex.Message);
                    Assert.Contains(dir.Path, ex.Message);
                }
            }
        });
        Assert.True(opened > 10, $"{opened} opened");
    }
}

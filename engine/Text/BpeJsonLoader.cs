// Loads a Hugging Face tokenizer.json whose model is BPE (Llama-3 byte-level, or Llama-2/TinyStories
// SentencePiece-style with byte_fallback) into a BpeEncoder plus per-token decode data. Anything it does
// not implement is refused with a ModelFormatException naming the file and the setting.
// Exercised by `dotnet test tests/Tests.csproj --filter FullyQualifiedName~Tokenizer`.
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using LlamaRun.Model;

namespace LlamaRun.Text;

internal static class BpeJsonLoader
{
    public static Tokenizer Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw ModelFormatException.In(path, $"cannot read tokenizer ({e.Message})", e);
        }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 256 }); }
        catch (JsonException e) { throw ModelFormatException.In(path, $"not valid JSON ({e.Message})", e); }
        using (doc)
        {
            try { return Build(path, doc.RootElement); }
            catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException)
            {
                throw ModelFormatException.In(path, $"unexpected JSON structure ({e.Message})", e);
            }
        }
    }

    private static Tokenizer Build(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw ModelFormatException.In(path, "top level is not a JSON object");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.In(path, "missing the \"model\" section");
        string type = Str(model, "type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : "");
        if (type != "BPE")
            throw ModelFormatException.In(path, $"model type '{type}' is not supported (only BPE)");
        foreach (var unsupported in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (Str(model, unsupported) is { Length: > 0 } v)
                throw ModelFormatException.In(path, $"BPE {unsupported} '{v}' is not supported");

        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.In(path, "model.vocab is missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw ModelFormatException.In(path, $"model.vocab['{p.Name}'] is not a non-negative integer id");
            vocab[p.Name] = id;
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in addedEl.EnumerateArray())
            {
                string content = Str(a, "content") ?? throw ModelFormatException.In(path, "an added token has no content");
                if (!a.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out int id) || id < 0)
                    throw ModelFormatException.In(path, $"added token '{content}' has no valid id");
                added.Add(new AddedToken(content, id, Bool(a, "special"), Bool(a, "lstrip"), Bool(a, "rstrip"),
                    Bool(a, "single_word")));
            }
        }

        int vocabSize = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        if (vocabSize == 0) throw ModelFormatException.In(path, "the vocabulary is empty");
        var pieces = new string[vocabSize];
        foreach (var (piece, id) in vocab) pieces[id] = piece;
        var special = new bool[vocabSize];
        foreach (var a in added)
        {
            pieces[a.Id] = a.Content;
            special[a.Id] = a.Special;
        }
        for (int i = 0; i < vocabSize; i++) pieces[i] ??= "";

        var merges = ReadMerges(path, model, vocab);
        int unkId = -1;
        if (Str(model, "unk_token") is { } unk && !vocab.TryGetValue(unk, out unkId))
            throw ModelFormatException.In(path, $"unk_token '{unk}' is not in the vocabulary");

        var normalizer = ReadNormalizer(path, root.TryGetProperty("normalizer", out var n) ? n : default);
        var preTokenizer = ReadPreTokenizer(path, root.TryGetProperty("pre_tokenizer", out var pt) ? pt : default);
        var encoder = new BpeEncoder(vocab, merges, unkId, Bool(model, "byte_fallback"), Bool(model, "fuse_unk"),
            Bool(model, "ignore_merges"), added, normalizer, preTokenizer);
        var decode = BpeJsonDecoder.Build(path, root.TryGetProperty("decoder", out var d) ? d : default, pieces, special);

        var (bos, eos) = FindBosEos(path, root, pieces);
        return new Tokenizer(pieces, decode, encoder, bos, eos);
    }

    private static Dictionary<long, (int Rank, int Id)> ReadMerges(string path, JsonElement model, Dictionary<string, int> vocab)
    {
        var merges = new Dictionary<long, (int, int)>(BpeEncoder.PairComparer.Instance);
        if (!model.TryGetProperty("merges", out var arr) || arr.ValueKind != JsonValueKind.Array) return merges;
        merges.EnsureCapacity(arr.GetArrayLength());
        var lookup = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        char[] joined = new char[256];
        int rank = 0;
        foreach (var m in arr.EnumerateArray())
        {
            string left, right;
            int sp = -1;
            if (m.ValueKind == JsonValueKind.String)
            {
                left = right = m.GetString()!;
                sp = left.IndexOf(' ');
                if (sp <= 0 || sp != left.LastIndexOf(' ')) throw ModelFormatException.In(path, $"merge {rank} '{left}' is not 'a b'");
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
            {
                left = m[0].GetString() ?? "";
                right = m[1].GetString() ?? "";
            }
            else throw ModelFormatException.In(path, $"merge {rank} is neither \"a b\" nor [a, b]");
            var a = sp < 0 ? left.AsSpan() : left.AsSpan(0, sp);
            var b = sp < 0 ? right.AsSpan() : right.AsSpan(sp + 1);
            if (joined.Length < a.Length + b.Length) joined = new char[a.Length + b.Length];
            a.CopyTo(joined);
            b.CopyTo(joined.AsSpan(a.Length));
            if (!lookup.TryGetValue(a, out int ia) || !lookup.TryGetValue(b, out int ib))
                throw ModelFormatException.In(path, $"merge {rank} ('{a}', '{b}') uses a piece missing from the vocabulary");
            if (!lookup.TryGetValue(joined.AsSpan(0, a.Length + b.Length), out int merged))
                throw ModelFormatException.In(path, $"merge {rank} result '{a}{b}' is missing from the vocabulary");
            merges.TryAdd(BpeEncoder.PairKey(ia, ib), (rank, merged));   // the first (best) rank wins
            rank++;
        }
        return merges;
    }

    private static NormalizerStep[] ReadNormalizer(string path, JsonElement el)
    {
        var steps = new List<NormalizerStep>();
        void Add(JsonElement e)
        {
            if (e.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return;
            switch (Str(e, "type"))
            {
                case "Sequence":
                    foreach (var s in e.GetProperty("normalizers").EnumerateArray()) Add(s);
                    break;
                case "Prepend":
                    steps.Add(new NormalizerStep.Prepend(Str(e, "prepend") ?? ""));
                    break;
                case "Replace":
                    steps.Add(new NormalizerStep.Replace(StringPattern(path, e, "normalizer"), Str(e, "content") ?? ""));
                    break;
                case var t:
                    throw ModelFormatException.In(path, $"normalizer '{t}' is not supported");
            }
        }
        Add(el);
        return [.. steps];
    }

    private static PreTokenizerStep[] ReadPreTokenizer(string path, JsonElement el)
    {
        var steps = new List<PreTokenizerStep>();
        void Add(JsonElement e)
        {
            if (e.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return;
            switch (Str(e, "type"))
            {
                case "Sequence":
                    foreach (var s in e.GetProperty("pretokenizers").EnumerateArray()) Add(s);
                    break;
                case "Split":
                    steps.Add(ReadSplit(path, e));
                    break;
                case "ByteLevel":
                    steps.Add(new PreTokenizerStep.ByteLevel(Bool(e, "add_prefix_space"), BoolOr(e, "use_regex", true)));
                    break;
                case "Metaspace":
                    steps.Add(new PreTokenizerStep.Metaspace(Replacement(e), Scheme(path, e), BoolOr(e, "split", true)));
                    break;
                case "Digits":
                    steps.Add(new PreTokenizerStep.Digits(Bool(e, "individual_digits")));
                    break;
                case var t:
                    throw ModelFormatException.In(path, $"pre-tokenizer '{t}' is not supported");
            }
        }
        Add(el);
        for (int i = 0; i < steps.Count - 1; i++)
            if (steps[i] is PreTokenizerStep.ByteLevel)
                throw ModelFormatException.In(path, "a ByteLevel pre-tokenizer that is not the last step is not supported");
        return [.. steps];
    }

    private static PreTokenizerStep.Split ReadSplit(string path, JsonElement e)
    {
        if (Bool(e, "invert")) throw ModelFormatException.In(path, "Split pre-tokenizer with invert is not supported");
        var behavior = Str(e, "behavior") switch
        {
            "Isolated" => SplitBehavior.Isolated,
            "Removed" => SplitBehavior.Removed,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            var b => throw ModelFormatException.In(path, $"Split behavior '{b}' is not supported"),
        };
        var pattern = e.GetProperty("pattern");
        string regex = Str(pattern, "Regex") ?? Regex.Escape(StringPattern(path, e, "Split pre-tokenizer"));
        try { return new PreTokenizerStep.Split(new Regex(regex, RegexOptions.Compiled | RegexOptions.CultureInvariant), behavior); }
        catch (ArgumentException ex) { throw ModelFormatException.In(path, $"Split regex does not compile ({ex.Message})", ex); }
    }

    internal static char Replacement(JsonElement e) => Str(e, "replacement") is { Length: 1 } r ? r[0] : SentencePieceBpe.SpaceSymbol;

    internal static PrependScheme Scheme(string path, JsonElement e)
    {
        if (Str(e, "prepend_scheme") is { } s)
            return s switch
            {
                "always" => PrependScheme.Always,
                "first" => PrependScheme.First,
                "never" => PrependScheme.Never,
                _ => throw ModelFormatException.In(path, $"Metaspace prepend_scheme '{s}' is not supported"),
            };
        return BoolOr(e, "add_prefix_space", true) ? PrependScheme.Always : PrependScheme.Never;
    }

    internal static string StringPattern(string path, JsonElement e, string what)
    {
        if (e.TryGetProperty("pattern", out var p) && Str(p, "String") is { } s) return s;
        throw ModelFormatException.In(path, $"{what} pattern must be {{\"String\": ...}} here");
    }

    private static (int Bos, int Eos) FindBosEos(string path, JsonElement root, string[] pieces)
    {
        int Find(string? piece) => piece is null ? -1 : Array.IndexOf(pieces, piece);
        string? bos = null, eos = null;
        if (root.TryGetProperty("post_processor", out var pp) && Str(pp, "type") == "TemplateProcessing" &&
            pp.TryGetProperty("single", out var single) && single.ValueKind == JsonValueKind.Array &&
            single.GetArrayLength() > 0 && single[0].TryGetProperty("SpecialToken", out var st))
            bos = Str(st, "id");
        string config = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", "tokenizer_config.json");
        if (File.Exists(config))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(config));
                bos ??= TokenName(doc.RootElement, "bos_token");
                eos = TokenName(doc.RootElement, "eos_token");
            }
            catch (JsonException e) { throw ModelFormatException.In(config, $"not valid JSON ({e.Message})", e); }
        }
        int bosId = Find(bos), eosId = Find(eos);
        if (bosId < 0) bosId = new[] { "<s>", "<|begin_of_text|>" }.Select(Find).FirstOrDefault(i => i >= 0, -1);
        if (eosId < 0) eosId = new[] { "</s>", "<|end_of_text|>", "<|endoftext|>" }.Select(Find).FirstOrDefault(i => i >= 0, -1);
        return (bosId, eosId);
    }

    private static string? TokenName(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v)
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : Str(v, "content")
            : null;

    internal static string? Str(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString() : null;

    internal static bool Bool(JsonElement e, string key) => BoolOr(e, key, false);

    internal static bool BoolOr(JsonElement e, string key, bool fallback) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? v.GetBoolean() : fallback;
}

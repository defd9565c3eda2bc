// Everything a command needs to run a model: config, tokenizer, backend, weights, RoPE schedule, KV cache.
// Shared flags: -m DIR, --ctx N, --device cpu|cuda|ilgpu-cpu|auto, --rope METHOD[:k=v,...], --rope-table FILE, -b N (prefill chunk),
// --compute mixed|f32|bf16: mixed (default) keeps activations in f32 with a bf16 KV cache and bf16 tensor-core
// operands on the GPU; f32 keeps everything but the stored weights in f32 (the CPU always does); bf16 rounds every
// activation and op intermediate as transformers in bfloat16 does. --kv bf16|f32: the CPU's KV cache (bf16 by default,
// f32 with --compute f32).
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Gpu;
using LlamaRun.Model;
using LlamaRun.Rope;
using LlamaRun.Text;

namespace LlamaRun.Cli;

/// <summary>A model loaded for one command, disposed as a whole.</summary>
public sealed class ModelSession : IDisposable
{
    private ModelSession(string dir, LlamaConfig config, Tokenizer? tokenizer, IBackend backend, LlamaWeights weights, Llama model, string ropeNote,
        int batch)
    {
        _batch = batch;
        Directory = dir;
        Config = config;
        TokenizerOrNull = tokenizer;
        Backend = backend;
        Weights = weights;
        Model = model;
        RopeNote = ropeNote;
    }

    private readonly int _batch;

    public string Directory { get; }
    public LlamaConfig Config { get; }
    public Tokenizer? TokenizerOrNull { get; }
    public Tokenizer Tokenizer => TokenizerOrNull ?? throw new UsageException($"{Directory}: no tokenizer.json or tokenizer.model");
    public IBackend Backend { get; }
    public LlamaWeights Weights { get; }
    public Llama Model { get; }

    /// <summary>One line on the RoPE table in use (empty within the trained length without scaling).</summary>
    public string RopeNote { get; }

    /// <summary>Largest context accepted (2^24 positions; RoPE tables and position arithmetic are exact below it).</summary>
    public const int MaxContext = 1 << 24;

    /// <summary>The model directory named by -m, or the embedded default model.</summary>
    public static string ModelDirectory(Args args)
    {
        var dir = args.String("-m", "--model");
        if (dir is null) return EmbeddedModel.Directory();
        if (!System.IO.Directory.Exists(dir)) throw new UsageException($"{dir}: no such model directory");
        if (!File.Exists(Path.Combine(dir, "config.json"))) throw new UsageException($"{dir}: no config.json in the model directory");
        return dir;
    }

    /// <summary>
    /// Loads the model for a context of ctx tokens (0: the trained length), on backend when given (it then belongs to the
    /// session). sweepMethods: the --rope specs a sweep will run, so that the backend can run them all. checkpointRope
    /// (bench): without --rope or --rope-table, the checkpoint's own RoPE even past the trained length. modelDir: the
    /// directory instead of -m's; randomWeights (bench): a directory without safetensors files gets RandomWeights.
    /// </summary>
    public static ModelSession Open(Args args, int ctx, bool needTokenizer = true, IBackend? backend = null, IReadOnlyList<string>? sweepMethods = null,
        bool checkpointRope = false, string? modelDir = null, bool randomWeights = false)
    {
        try
        {
            string dir = modelDir ?? ModelDirectory(args);
            string device = args.String("--device") ?? "auto";
            string? ropeSpec = args.String("--rope");
            string? ropeTable = args.String("--rope-table");
            var (compute, fullPrecision) = ComputeType(args.String("--compute"));
            var kv = KvCacheType(args.String("--kv"));
            int batch = args.Int("-b", 0, min: 1);
            var config = LlamaConfigReader.Read(Path.Combine(dir, "config.json"));
            if (ctx <= 0) ctx = config.MaxPositionEmbeddings;
            if (ctx > MaxContext) throw new UsageException($"--ctx {ctx} is larger than the {MaxContext} positions llama-run supports");
            var tokenizer = needTokenizer || HasTokenizer(dir) ? Tokenizer.FromModelDirectory(dir) : null;
            if (tokenizer is not null && tokenizer.VocabSize > config.VocabSize)
                throw new UsageException($"{dir}: the tokenizer has {tokenizer.VocabSize} tokens but the model only {config.VocabSize}");

            // The default past the trained length picks an index remap only where attention runs one at full speed.
            bool fastRemap = backend?.Capabilities.FastIndexRemap ?? FastRemapDevice(device);
            var (rope, note) = checkpointRope && ropeSpec is null && ropeTable is null
                ? (RopeMethods.FromConfig(config), "rope: the checkpoint's own at every length, as llama-bench runs it (--rope SPEC times a context-extension method)")
                : ChooseRope(config, ctx, ropeSpec, ropeTable, fastRemap);
            // Index remaps (Self-Extend, DPE, ReRoPE) need the GPU's far-branch kernels: loaded when this run or a sweep uses one.
            bool remap = rope.Base.Remap is not null
                || (sweepMethods ?? []).Any(m => ChooseRope(config, ctx, m == "default" ? null : m, null, fastRemap).Rope.Base.Remap is not null);
            backend ??= CreateBackend(device, config, compute, fullPrecision, kv, remap);
            if (rope.Base.Remap is not null && !backend.Capabilities.IndexRemap)
                throw new UsageException($"rope {ropeSpec ?? ropeTable} remaps positions, which the {backend.Name} backend does not do yet: use --device cpu");
            CheckMemory(backend, config, ctx, rope.Base.Remap is not null);
            var progress = new LoadProgress();
            var weights = LlamaWeights.Load(randomWeights ? WeightSource(config, dir) : Checkpoint.Open(dir), config, backend,
                progress: (d, t) => progress.Report(0, d, t));
            progress.Finish();
            try
            {
                backend.WaitUntilReady();   // the GPU's kernels compiled while the weights loaded
                // Prefill chunks: a GPU reaches its tensor-core rate on large GEMMs, the CPU gains nothing past 512 rows.
                if (batch == 0) batch = backend.Capabilities.PrefillChunk;
                var model = Llama.Create(config, weights, backend, ctx, rope, maxBatch: batch, activations: compute);
                return new ModelSession(dir, config, tokenizer, backend, weights, model, note, batch);
            }
            catch
            {
                weights.Dispose();
                throw;
            }
        }
        catch
        {
            backend?.Dispose();
            throw;
        }
    }

    /// <summary>The seed of the random weights bench gives a directory with a config.json alone.</summary>
    public const int RandomSeed = 1;

    /// <summary>dir's checkpoint, or where it has a config.json alone seeded random bf16 weights (timing and sharding only).</summary>
    public static IWeightSource WeightSource(LlamaConfig config, string dir) =>
        HasWeightFiles(dir) ? Checkpoint.Open(dir) : new RandomWeights(config, DType.BF16, RandomSeed);

    /// <summary>Whether dir holds a safetensors checkpoint (a single file, shards or their index).</summary>
    public static bool HasWeightFiles(string dir) => System.IO.Directory.EnumerateFiles(dir, "*.safetensors").Any()
        || File.Exists(Path.Combine(dir, Checkpoint.IndexFileName));

    /// <summary>Whether --device resolves to a backend that runs index remaps at full speed (the CPU backend; CUDA with GpuBackend.FastRemapOnCuda).</summary>
    public static bool FastRemapDevice(string device) =>
        device is "cpu" or "ilgpu-cpu" || (device == "auto" && !GpuBackend.IsCudaAvailable(out _)) || (device is "cuda" or "auto" && GpuBackend.FastRemapOnCuda);

    /// <summary>Whether the RoPE ChooseRope would pick remaps positions, decided without building the table.</summary>
    public static bool Remaps(LlamaConfig config, int ctx, string? spec, string? tableFile, bool fastRemap)
    {
        if (spec is not null && spec.StartsWith("table:", StringComparison.OrdinalIgnoreCase)) tableFile = spec[6..];
        else if (spec is not null) return RopeMethods.IsRemap(spec);
        if (tableFile is not null) return RopeTableFile.Load(tableFile).Remap is not null;
        return RopeMethods.DefaultRemaps(config, ctx, fastRemap);
    }

    /// <summary>The backend for --device, with the GPU kernels this model's shapes and compute mode use.</summary>
    public static IBackend CreateBackend(string device, LlamaConfig config, DType compute, bool fullPrecision, DType? kvCache = null, bool remap = false) =>
        BackendFactory.Create(device, fullPrecision, kvCache,
            GpuKernelSet.For(config.HeadDim, config.NumAttentionHeads / config.NumKeyValueHeads, compute == DType.BF16, remap));

    /// <summary>Parses --compute: mixed (default), f32 (full precision on the GPU too) or bf16 (activations rounded as in bf16).</summary>
    public static (DType Activations, bool FullPrecision) ComputeType(string? value) => value?.ToLowerInvariant() switch
    {
        null or "mixed" => (DType.F32, false),
        "f32" => (DType.F32, true),
        "bf16" => (DType.BF16, false),
        _ => throw new UsageException($"--compute must be mixed, f32 or bf16, not '{value}'"),
    };

    /// <summary>Parses --kv: bf16 or f32, or null when not given (the backend's default).</summary>
    public static DType? KvCacheType(string? value) => value?.ToLowerInvariant() switch
    {
        null => null,
        "bf16" => DType.BF16,
        "f32" => DType.F32,
        _ => throw new UsageException($"--kv must be bf16 or f32, not '{value}'"),
    };

    private static bool HasTokenizer(string dir) =>
        File.Exists(Path.Combine(dir, "tokenizer.json")) || File.Exists(Path.Combine(dir, "tokenizer.model"));

    /// <summary>--rope-table, then --rope, then the checkpoint's own scaling, then the default method past the trained length.</summary>
    public static (RopeSchedule Rope, string Note) ChooseRope(LlamaConfig config, int ctx, string? spec, string? tableFile, bool fastRemap = true)
    {
        // "table:FILE" names a saved table where a method spec goes (a --sweep entry).
        if (spec is not null && spec.StartsWith("table:", StringComparison.OrdinalIgnoreCase))
        {
            if (tableFile is not null) throw new UsageException("give either --rope or --rope-table, not both");
            (tableFile, spec) = (spec[6..], null);
        }
        if (spec is not null && tableFile is not null) throw new UsageException("give either --rope or --rope-table, not both");
        if (tableFile is not null)
        {
            var t = RopeTableFile.Load(tableFile);
            if (t.RotaryDim != config.RotaryDim)
                throw new UsageException($"{tableFile}: the table has {t.InvFreq.Length} pairs, the model rotates {config.RotaryDim / 2}");
            if (t.Remap?.KeyDims is { } keyDims && (keyDims.Layers != config.NumHiddenLayers || keyDims.KvHeads != config.NumKeyValueHeads))
                throw new UsageException($"{tableFile}: the key dims were selected for {keyDims.Layers} layers x {keyDims.KvHeads} KV heads, the model has {config.NumHiddenLayers} x {config.NumKeyValueHeads}");
            return (RopeSchedule.Fixed(t), $"rope: table {tableFile} ({t.Method})");
        }
        if (spec is not null)
        {
            var s = RopeMethods.Parse(spec, config, ctx);
            return (s, "rope: " + RopeMethods.Describe(s));
        }
        if (config.Rope.Type != RopeType.Default)
        {
            var s = RopeMethods.FromConfig(config);
            return (s, "rope: from config.json, " + RopeMethods.Describe(s));
        }
        if (ctx > config.MaxPositionEmbeddings)
        {
            var s = RopeMethods.Default(config, ctx, fastRemap);
            string why = fastRemap
                ? " (the default: best passkey retrieval and perplexity measured past the trained length)"
                : " (the default on this backend; --rope leaky-rerope retrieves better but runs on a slower attention kernel here)";
            return (s, $"rope: --ctx {ctx} is past the trained {config.MaxPositionEmbeddings}, using " + RopeMethods.Describe(s) + why);
        }
        return (RopeMethods.FromConfig(config), "");
    }

    /// <summary>Another model on the session's weights and backend, for ctx tokens with the given RoPE schedule (sweeps).</summary>
    public Llama CreateModel(int ctx, RopeSchedule rope)
    {
        if (rope.Base.Remap is not null && !Backend.Capabilities.IndexRemap)
            throw new UsageException($"rope {rope.Base.Method} remaps positions, which the {Backend.Name} backend does not do yet: use --device cpu");
        CheckMemory(Backend, Config, ctx, rope.Base.Remap is not null);
        return Llama.Create(Config, Weights, Backend, ctx, rope, maxBatch: _batch, activations: Model.Activations);
    }

    // Refuses a context whose KV cache (plus weights, on the CPU) would not fit, before allocating anything.
    private static void CheckMemory(IBackend backend, LlamaConfig config, int ctx, bool farKeys = false)
    {
        long kv = Llama.KvCacheBytes(config, ctx, backend.KvElementSize, farKeys);
        long free = backend.FreeMemoryBytes;
        if (free > 0 && kv > free)
            throw new UsageException($"--ctx {ctx} needs {kv / 1e9:F1} GB of KV cache but {backend.Name} has {free / 1e9:F1} GB free");
    }

    public void Dispose()
    {
        Model.Dispose();
        Weights.Dispose();
        Backend.Dispose();
    }
}

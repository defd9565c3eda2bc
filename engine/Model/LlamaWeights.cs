// Llama weights under their Hugging Face names, strictly loaded from a checkpoint and uploaded to a backend.
// Matrices keep their checkpoint dtype (the CPU backend aliases the mapping); norms become F32. With fuseProjections
// (the GPU default) q/k/v and gate/up of a layer are stored as one matrix each, so decoding runs one matmul for each
// group; the single projections are row views of it. With a ShardPlan (tensor parallelism) a rank loads only its slices:
// rows of q/k/v, gate/up and lm_head, columns of o_proj and down_proj (copied out of the mapping), the embedding and
// norms whole. Exercise: dotnet test --filter "WeightsTests|LlamaTests|TensorParallelTests"
using System.Runtime.InteropServices;
using LlamaRun.Core;

namespace LlamaRun.Model;

/// <summary>The weights of one decoder layer, named as in the checkpoint (model.layers.{i}.*).</summary>
public sealed record LayerWeights(
    Tensor InputLayernorm,          // F32 [1, hidden]
    Tensor QProj,                   // [heads * headDim, hidden]
    Tensor KProj,                   // [kvHeads * headDim, hidden]
    Tensor VProj,                   // [kvHeads * headDim, hidden]
    Tensor OProj,                   // [hidden, heads * headDim]
    Tensor PostAttentionLayernorm,  // F32 [1, hidden]
    Tensor GateProj,                // [intermediate, hidden]
    Tensor UpProj,                  // [intermediate, hidden]
    Tensor DownProj)                // [hidden, intermediate]
{
    /// <summary>q_proj, k_proj and v_proj stacked, [heads * headDim + 2 * kvHeads * headDim, hidden], when fused.</summary>
    public Tensor? Qkv { get; init; }

    /// <summary>gate_proj and up_proj stacked, [2 * intermediate, hidden], when fused.</summary>
    public Tensor? GateUp { get; init; }
}

/// <summary>All weights of a Llama checkpoint on one backend; owns the file mapping and host buffers until Dispose.</summary>
public sealed class LlamaWeights : IDisposable
{
    private readonly IWeightSource _source;
    private readonly List<Tensor> _owned;
    private readonly List<nint> _hostBuffers;

    private LlamaWeights(IWeightSource source, List<Tensor> owned, List<nint> hostBuffers,
        Tensor embed, LayerWeights[] layers, Tensor norm, Tensor lmHead, long weightBytes)
    {
        _source = source;
        _owned = owned;
        _hostBuffers = hostBuffers;
        EmbedTokens = embed;
        Layers = layers;
        Norm = norm;
        LmHead = lmHead;
        WeightBytes = weightBytes;
    }

    /// <summary>model.embed_tokens.weight: [vocab, hidden].</summary>
    public Tensor EmbedTokens { get; }

    /// <summary>model.layers.{i}.*, one entry per layer.</summary>
    public LayerWeights[] Layers { get; }

    /// <summary>model.norm.weight: F32 [1, hidden].</summary>
    public Tensor Norm { get; }

    /// <summary>lm_head.weight: [vocab, hidden]; the same tensor as EmbedTokens when the embeddings are tied.</summary>
    public Tensor LmHead { get; }

    /// <summary>Bytes of all distinct uploaded weight tensors.</summary>
    public long WeightBytes { get; }

    /// <summary>Bytes of weights one decode step reads: every layer's matrices and norms, the final norm, the classifier and one embedding row (none when tied).</summary>
    public long DecodeReadBytes
    {
        get
        {
            long bytes = Norm.ByteLength + LmHead.ByteLength;
            if (!ReferenceEquals(LmHead, EmbedTokens)) bytes += EmbedTokens.ByteLength / Math.Max(1, EmbedTokens.Rows);
            foreach (var l in Layers)
                bytes += l.InputLayernorm.ByteLength + l.PostAttentionLayernorm.ByteLength + l.QProj.ByteLength + l.KProj.ByteLength
                         + l.VProj.ByteLength + l.OProj.ByteLength + l.GateProj.ByteLength + l.UpProj.ByteLength + l.DownProj.ByteLength;
            return bytes;
        }
    }

    /// <summary>Tensor names that were present but ignored (rotary_emb.inv_freq buffers).</summary>
    public IReadOnlyList<string> Ignored { get; private init; } = [];

    /// <summary>Loads every weight of modelDir (a directory or a .safetensors file), checking names, shapes and dtypes against config; fuseProjections defaults to what the backend states pays off.</summary>
    public static LlamaWeights Load(string modelDir, LlamaConfig config, IBackend backend, bool? fuseProjections = null, ShardPlan? shard = null,
        Action<long, long>? progress = null) =>
        Load(Checkpoint.Open(modelDir), config, backend, fuseProjections, shard, progress);

    /// <summary>
    /// Loads every weight of source (which the weights then own, disposed with them or on failure), checked as a
    /// checkpoint's. progress(done, total): bytes uploaded so far of about total (this rank's share), after each tensor.
    /// </summary>
    public static LlamaWeights Load(IWeightSource source, LlamaConfig config, IBackend backend, bool? fuseProjections = null, ShardPlan? shard = null,
        Action<long, long>? progress = null)
    {
        bool fuse = shard is null && (fuseProjections ?? backend.Capabilities.StackedDecodeProjections);
        var checkpoint = source;
        var owned = new List<Tensor>();
        var hostBuffers = new List<nint>();
        try
        {
            // This rank's share: the embedding and norms whole, the sharded matrices 1 / ranks of each.
            long total = checkpoint.Tensors.Values.Sum(t => shard is null || t.Shape.Length < 2 || t.Name == "model.embed_tokens.weight"
                ? t.ByteLength : t.ByteLength / shard.Size);
            using var loader = new Loader(checkpoint, backend, owned, hostBuffers) { Progress = progress is null ? null : done => progress(done, total) };
            int h = config.HiddenSize, ff = config.IntermediateSize, q = config.QDim, kv = config.KvDim;

            var expected = new HashSet<string>(StringComparer.Ordinal);
            string N(string name) { expected.Add(name); return name; }

            var embed = loader.Matrix(N("model.embed_tokens.weight"), config.VocabSize, h);
            var layers = new LayerWeights[config.NumHiddenLayers];
            int hd = config.HeadDim;
            for (int i = 0; i < layers.Length; i++)
            {
                string p = $"model.layers.{i}.";
                var input = loader.Vector(N(p + "input_layernorm.weight"), h);
                var post = loader.Vector(N(p + "post_attention_layernorm.weight"), h);
                string qn = N(p + "self_attn.q_proj.weight"), kn = N(p + "self_attn.k_proj.weight"), vn = N(p + "self_attn.v_proj.weight");
                string on = N(p + "self_attn.o_proj.weight"), gn = N(p + "mlp.gate_proj.weight"), un = N(p + "mlp.up_proj.weight");
                string dn = N(p + "mlp.down_proj.weight");
                if (shard is { } s)
                {
                    // This rank's heads (rows of q, k, v; columns of o) and FFN slice (rows of gate, up; columns of down).
                    layers[i] = new LayerWeights(input,
                        loader.Rows(qn, q, h, s.HeadStart * hd, s.Heads * hd), loader.Rows(kn, kv, h, s.KvStart * hd, s.KvHeads * hd),
                        loader.Rows(vn, kv, h, s.KvStart * hd, s.KvHeads * hd), loader.Columns(on, h, q, s.HeadStart * hd, s.Heads * hd), post,
                        loader.Rows(gn, ff, h, s.FfnStart, s.Ffn), loader.Rows(un, ff, h, s.FfnStart, s.Ffn), loader.Columns(dn, h, ff, s.FfnStart, s.Ffn));
                    continue;
                }
                var qkv = loader.Stack(fuse, [(qn, q), (kn, kv), (vn, kv)], h);
                var o = loader.Matrix(on, h, q);
                var gateUp = loader.Stack(fuse, [(gn, ff), (un, ff)], h);
                var down = loader.Matrix(dn, h, ff);
                layers[i] = new LayerWeights(input, qkv.Parts[0], qkv.Parts[1], qkv.Parts[2], o, post, gateUp.Parts[0], gateUp.Parts[1], down)
                {
                    Qkv = qkv.Stacked,
                    GateUp = gateUp.Stacked,
                };
            }
            var norm = loader.Vector(N("model.norm.weight"), h);

            Tensor lmHead;
            const string lmName = "lm_head.weight";
            expected.Add(lmName);
            if (config.TieWordEmbeddings)
            {
                // A tied checkpoint may still carry lm_head (a copy of the embedding); check it, then use the embedding as transformers does.
                if (checkpoint.Tensors.ContainsKey(lmName)) loader.Check(lmName, config.VocabSize, h);
                lmHead = shard is { } s ? embed.SliceRows(s.VocabStart, s.Vocab) : embed;
            }
            else
            {
                if (!checkpoint.Tensors.ContainsKey(lmName))
                    throw ModelFormatException.In(checkpoint.Source, $"tensor \"{lmName}\" is missing and config.json has tie_word_embeddings false");
                lmHead = shard is { } s ? loader.Rows(lmName, config.VocabSize, h, s.VocabStart, s.Vocab) : loader.Matrix(lmName, config.VocabSize, h);
            }

            var ignored = new List<string>();
            foreach (var name in checkpoint.Tensors.Keys.Order(StringComparer.Ordinal))
            {
                if (expected.Contains(name)) continue;
                if (name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)) { ignored.Add(name); continue; }
                throw ModelFormatException.In(checkpoint.PathOf(name),
                    $"unexpected tensor {SafeTensorsHeader.Quote(name)} ({checkpoint.Tensors[name].DTypeName}{checkpoint.Tensors[name].ShapeText}); config.json describes {config.NumHiddenLayers} Llama layers");
            }
            long bytes = owned.Sum(t => t.ByteLength);
            return new LlamaWeights(checkpoint, owned, hostBuffers, embed, layers, norm, lmHead, bytes) { Ignored = ignored };
        }
        catch
        {
            Release(owned, hostBuffers);
            checkpoint.Dispose();
            throw;
        }
    }

    private static unsafe void Release(List<Tensor> owned, List<nint> hostBuffers)
    {
        foreach (var t in owned)
        {
            try { t.Dispose(); } catch { /* Dispose paths never throw. */ }
        }
        owned.Clear();
        foreach (var p in hostBuffers) NativeMemory.AlignedFree((void*)p);
        hostBuffers.Clear();
    }

    /// <summary>Frees the backend tensors, then the host norm buffers, then unmaps the checkpoint (or frees the source's buffers).</summary>
    public void Dispose()
    {
        Release(_owned, _hostBuffers);
        _source.Dispose();
    }

    private sealed unsafe class Loader(IWeightSource checkpoint, IBackend backend, List<Tensor> owned, List<nint> hostBuffers) : IDisposable
    {
        private long _done;

        /// <summary>Told the bytes uploaded so far after each tensor.</summary>
        public Action<long>? Progress { get; init; }

        private void Own(Tensor t)
        {
            owned.Add(t);
            _done += t.ByteLength;
            Progress?.Invoke(_done);
        }

        private byte* _staging;        // stacking buffer, reused while the backend copies what it uploads
        private long _stagingBytes;

        public void Dispose() => FreeStaging();

        private void FreeStaging()
        {
            if (_staging != null) NativeMemory.AlignedFree(_staging);
            _staging = null;
            _stagingBytes = 0;
        }

        // Checks tensor name is [rows, cols] (or [cols] when rows is 0) in F32, F16 or BF16.
        public TensorInfo Check(string name, int rows, int cols)
        {
            if (!checkpoint.Tensors.TryGetValue(name, out var info))
                throw ModelFormatException.In(checkpoint.Source, $"tensor \"{name}\" is missing (expected {(rows == 0 ? $"[{cols}]" : $"[{rows}, {cols}]")})");
            long[] want = rows == 0 ? [cols] : [rows, cols];
            string file = checkpoint.PathOf(name);
            if (!info.Shape.AsSpan().SequenceEqual(want))
                throw ModelFormatException.In(file, $"tensor \"{name}\": expected shape {SafeTensorsHeader.ShapeText(want)}, got {info.ShapeText}");
            if (info.WeightDType is null)
                throw ModelFormatException.In(file, $"tensor \"{name}\": expected dtype F32, F16 or BF16, got {info.DTypeName}");
            return info;
        }

        // Matrices of the same dtype and width, uploaded as one [sum of rows, cols] matrix (when fuse) whose row slices are
        // the parts; otherwise (or when the dtypes differ) each on its own. A backend that aliases the stacking buffer
        // (the CPU) keeps it; one that copies (a GPU) leaves it to be reused for the next group.
        public (Tensor? Stacked, Tensor[] Parts) Stack(bool fuse, (string Name, int Rows)[] parts, int cols)
        {
            var infos = parts.Select(x => Check(x.Name, x.Rows, cols)).ToArray();
            var dtype = infos[0].WeightDType!.Value;
            if (!fuse || infos.Any(x => x.WeightDType != dtype))
                return (null, [.. parts.Select(x => Matrix(x.Name, x.Rows, cols))]);
            int rows = parts.Sum(x => x.Rows);
            long rowBytes = (long)cols * dtype.Size(), total = rows * rowBytes;
            if (_stagingBytes < total)
            {
                FreeStaging();
                _staging = (byte*)NativeMemory.AlignedAlloc((nuint)total, 64);
                _stagingBytes = total;
            }
            byte* buffer = _staging;
            Tensor stacked;
            try
            {
                long offset = 0;
                foreach (var (name, r) in parts)
                {
                    Buffer.MemoryCopy((void*)checkpoint.Data(name, 0, r * rowBytes), buffer + offset, total - offset, r * rowBytes);
                    checkpoint.Release(name, kept: false);
                    offset += r * rowBytes;
                }
                stacked = backend.Upload(dtype, rows, cols, (nint)buffer);
            }
            catch
            {
                FreeStaging();
                throw;
            }
            if (stacked.Pointer == (nint)buffer)
            {
                hostBuffers.Add((nint)buffer);   // aliased: the weights own it from now on
                _staging = null;
                _stagingBytes = 0;
            }
            Own(stacked);
            var views = new Tensor[parts.Length];
            for (int i = 0, row = 0; i < parts.Length; row += parts[i].Rows, i++) views[i] = stacked.SliceRows(row, parts[i].Rows);
            return (stacked, views);
        }

        // Rows [start, start + count) of the [rows, cols] tensor name, straight from the mapping.
        public Tensor Rows(string name, int rows, int cols, int start, int count)
        {
            var info = Check(name, rows, cols);
            var dtype = info.WeightDType!.Value;
            long rowBytes = (long)cols * dtype.Size();
            nint data = checkpoint.Data(name, start * rowBytes, count * rowBytes);
            var t = backend.Upload(dtype, count, cols, data);
            Own(t);
            checkpoint.Release(name, kept: t.Pointer == data);
            return t;
        }

        // Columns [start, start + count) of the [rows, cols] tensor name, copied into a host buffer of their own.
        public Tensor Columns(string name, int rows, int cols, int start, int count)
        {
            var info = Check(name, rows, cols);
            var dtype = info.WeightDType!.Value;
            int size = dtype.Size();
            long bytes = (long)rows * count * size;
            var buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(64, bytes), 64);
            byte* src = (byte*)checkpoint.Data(name, 0, info.ByteLength);
            for (long r = 0; r < rows; r++)
                Buffer.MemoryCopy(src + (r * cols + start) * size, buffer + r * count * size, (long)count * size, (long)count * size);
            checkpoint.Release(name, kept: false);
            Tensor t;
            try { t = backend.Upload(dtype, rows, count, (nint)buffer); }
            catch
            {
                NativeMemory.AlignedFree(buffer);
                throw;
            }
            if (t.Pointer == (nint)buffer) hostBuffers.Add((nint)buffer);   // aliased by the backend
            else NativeMemory.AlignedFree(buffer);
            Own(t);
            return t;
        }

        public Tensor Matrix(string name, int rows, int cols)
        {
            var info = Check(name, rows, cols);
            nint data = checkpoint.Data(name, 0, info.ByteLength);
            var t = backend.Upload(info.WeightDType!.Value, rows, cols, data);
            Own(t);
            checkpoint.Release(name, kept: t.Pointer == data);
            return t;
        }

        // Norm weights are tiny; convert to F32 into an aligned host buffer that lives as long as the weights.
        public Tensor Vector(string name, int n)
        {
            Check(name, 0, n);
            float[] values = checkpoint.ReadF32(name);
            var buffer = (float*)NativeMemory.AlignedAlloc((nuint)(n * sizeof(float)), 64);
            hostBuffers.Add((nint)buffer);
            values.CopyTo(new Span<float>(buffer, n));
            var t = backend.Upload(DType.F32, 1, n, (nint)buffer);
            Own(t);
            return t;
        }
    }
}

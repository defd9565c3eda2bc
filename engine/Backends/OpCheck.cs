// Runs one op on two backends (a reference, usually CPU, and a candidate, usually CUDA) over OpCheckCases and compares:
// NMSE (sum of squared errors over sum of squared reference values: scale-free, like test-backend-ops), max abs error,
// NaN/Inf parity, first mismatches, and guard rows after every output left untouched. Used by BackendOpsTests and
// `llama-run check`.
using System.Runtime.InteropServices;
using System.Text;
using LlamaRun.Core;

namespace LlamaRun.Backends;

/// <summary>Outcome of one case: NMSE and max abs error of candidate against reference, and whether it passed.</summary>
public sealed record OpCheckResult(string Op, string Shape, double Nmse, double MaxAbs, bool Pass, string Detail);

/// <summary>Compares the ops of two backends on the shared case table.</summary>
public static unsafe class OpCheck
{
    private const int GuardRows = 2;
    private const float Sentinel = -1234.5f;

    /// <summary>Runs every case, in table order; FullPrecision cases run on fullPrecision when given (the candidate otherwise).</summary>
    public static IEnumerable<OpCheckResult> RunAll(IBackend reference, IBackend candidate, IBackend? fullPrecision = null) =>
        OpCheckCases.All.Select(c => Run(reference, c.FullPrecision && fullPrecision is not null ? fullPrecision : candidate, c));

    /// <summary>Runs one case on both backends with the same seeded inputs and compares the outputs.</summary>
    public static OpCheckResult Run(IBackend reference, IBackend candidate, OpCase c)
    {
        var rng = new Random(StableSeed(c.Name));
        var inputs = new Inputs(c, rng);
        var expected = Execute(reference, c, inputs, out string refGuard);
        var actual = Execute(candidate, c, inputs, out string candGuard);
        var detail = new StringBuilder();
        double nmse = 0, maxAbs = 0;
        bool pass = true;
        if (refGuard.Length + candGuard.Length > 0)
        {
            pass = false;
            detail.Append(refGuard).Append(candGuard);
        }
        for (int o = 0; o < expected.Count; o++)
        {
            var (n, m, ok, why) = Compare(expected[o].Data, actual[o].Data, c.MaxNmse);
            nmse = Math.Max(nmse, n);
            maxAbs = Math.Max(maxAbs, m);
            if (!ok)
            {
                pass = false;
                detail.Append($"{expected[o].Name}: {why} ");
            }
        }
        return new OpCheckResult(c.Op.ToString(), c.Name, nmse, maxAbs, pass, detail.ToString().Trim());
    }

    private static int StableSeed(string s)
    {
        uint h = 2166136261;
        foreach (char ch in s) h = (h ^ ch) * 16777619;
        return (int)(h & 0x7fffffff);
    }

    /// <summary>NMSE with NaN/Inf parity; argmax-style integer outputs (maxNmse 0) must match exactly.</summary>
    private static (double Nmse, double MaxAbs, bool Ok, string Why) Compare(float[] expected, float[] actual, double maxNmse)
    {
        double err = 0, norm = 0, maxAbs = 0;
        var bad = new List<string>();
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            bool special = !float.IsFinite(e) || !float.IsFinite(a);
            if (special)
            {
                bool same = (float.IsNaN(e) && float.IsNaN(a)) || e == a;
                if (!same && bad.Count < 5) bad.Add($"[{i}] expected {e} got {a}");
                if (!same) err = double.PositiveInfinity;
                continue;
            }
            double d = (double)a - e;
            err += d * d;
            norm += (double)e * e;
            maxAbs = Math.Max(maxAbs, Math.Abs(d));
            if (Math.Abs(d) > 1e-2 * (1 + Math.Abs(e)) && bad.Count < 5) bad.Add($"[{i}] expected {e} got {a}");
        }
        double nmse = norm > 0 ? err / norm : err;
        bool ok = double.IsFinite(nmse) && (maxNmse == 0 ? err == 0 : nmse <= maxNmse);
        return (nmse, maxAbs, ok, ok ? "" : $"nmse {nmse:E2} (bound {maxNmse:E0}), max abs {maxAbs:E2}; {string.Join("; ", bad)}");
    }

    /// <summary>Seeded uniform [-1, 1] inputs, generated once and given to both backends.</summary>
    private sealed class Inputs
    {
        public readonly float[] X, Y, W, Q, K, V;
        public readonly int[] Tokens;

        public Inputs(OpCase c, Random rng)
        {
            float[] Fill(long n) => [.. Enumerable.Range(0, checked((int)n)).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
            int kvDim = c.KvHeads * c.HeadDim, ctx = c.StartPos + c.T;
            bool attention = c.Op is OpKind.Rope or OpKind.Attention or OpKind.Rerotate;
            bool elementwise = c.Op is OpKind.SwiGlu or OpKind.Add or OpKind.Argmax or OpKind.Round;
            bool norm = c.Op is OpKind.RmsNorm or OpKind.AddRmsNorm;
            X = Fill(c.Op is OpKind.MatMul || norm || elementwise ? (long)c.T * c.N : 0);
            Y = Fill(elementwise || c.Op == OpKind.AddRmsNorm ? (long)c.T * c.N : 0);
            W = Fill(c.Op switch { OpKind.Embedding or OpKind.MatMul => (long)c.Out * c.N, _ => norm ? c.N : 0 });
            Q = Fill(attention ? (long)ctx * c.Heads * c.HeadDim : 0);
            K = Fill(attention ? (long)ctx * kvDim : 0);
            V = Fill(attention ? (long)ctx * kvDim : 0);
            Tokens = c.Op == OpKind.Embedding
                ? [.. Enumerable.Range(0, c.T).Select(i => i == 0 ? c.Out - 1 : i == 1 ? 0 : rng.Next(c.Out))]
                : [];
            if (c.Op == OpKind.Argmax)
                for (int r = 0; r < c.T; r++)
                {
                    X[r * c.N + (r * 7) % c.N] = 2f;   // a tie: the first index must win
                    X[r * c.N + c.N - 1] = 2f;
                }
            if (c.Op == OpKind.Round) RoundInputs(c, rng);
            else if (c.Compute != DType.F32)
            {
                // A framework computing in bf16 hands every op inputs already of that type.
                foreach (var a in new[] { X, Y, W, Q, K, V }) Cpu.CpuOps.Round(a, c.Compute);
            }
            if (c.Specials)
            {
                X[Math.Min(3, X.Length - 1)] = float.NaN;
                if (c.Op == OpKind.Add) X[Math.Min(5, X.Length - 1)] = float.PositiveInfinity;
            }
        }

        // Magnitudes from 2^-30 to 2^20 (f16 subnormals and overflow), exact ties of both types, infinities, f32 subnormals.
        private void RoundInputs(OpCase c, Random rng)
        {
            for (int i = 0; i < X.Length; i++) X[i] *= MathF.Pow(2, rng.Next(-30, 21));
            if (!c.Specials) return;
            float[] special =
            [
                float.PositiveInfinity, float.NegativeInfinity, 65520f, -65519f, 1e-40f, -3e-8f, 6e-8f,
                BitConverter.Int32BitsToSingle(0x3f808000), BitConverter.Int32BitsToSingle(0x3f818000), 1f + 1f / 2048, 1f + 3f / 2048,
                float.MaxValue, BitConverter.Int32BitsToSingle(0x7f7f8000),
            ];
            for (int i = 0; i < special.Length && 5 + i < X.Length; i++) X[5 + i] = special[i];
        }
    }

    private sealed record Output(string Name, float[] Data);

    /// <summary>Host buffers and tensors of one execution, freed together.</summary>
    private sealed class Scope(IBackend backend) : IDisposable
    {
        private readonly List<IDisposable> _owned = [];
        private readonly List<nint> _host = [];
        private readonly List<(Tensor Full, int Rows, string Name)> _guarded = [];
        public IBackend Backend { get; } = backend;

        public Tensor Make(DType dtype, int rows, int cols, ReadOnlySpan<float> data, bool guard = false, string name = "")
        {
            int total = rows + (guard ? GuardRows : 0);
            long n = (long)total * cols;
            nint p = (nint)NativeMemory.AllocZeroed((nuint)Math.Max(1, n * dtype.Size()));
            _host.Add(p);
            for (long i = 0; i < n; i++)
            {
                float v = i < (long)rows * cols ? (i < data.Length ? data[(int)i] : 0f) : Sentinel;
                if (dtype == DType.F32) ((float*)p)[i] = v;
                else ((ushort*)p)[i] = dtype == DType.BF16 ? DTypes.F32ToBF16(v) : DTypes.F32ToF16(v);
            }
            var full = Backend.Upload(dtype, total, cols, p);
            _owned.Add(full);
            if (guard) _guarded.Add((full, rows, name));
            return guard ? full.SliceRows(0, rows) : full;
        }

        public KvCache Cache(int layers, int maxSeq, int kvHeads, int headDim, bool farKeys = false)
        {
            var cache = Backend.AllocKvCache(layers, maxSeq, kvHeads, headDim, farKeys);
            _owned.Add(cache);
            return cache;
        }

        public string CheckGuards()
        {
            var sb = new StringBuilder();
            foreach (var (full, rows, name) in _guarded)
            {
                float[] all = Read(Backend, full);
                for (long i = (long)rows * full.Cols; i < all.Length; i++)
                    if (BitConverter.SingleToInt32Bits(all[i]) != BitConverter.SingleToInt32Bits(Sentinel))
                    {
                        sb.Append($"{Backend.Name} wrote past {name} at element {i} ");
                        break;
                    }
            }
            return sb.ToString();
        }

        public void Dispose()
        {
            foreach (var o in _owned) o.Dispose();
            foreach (var p in _host) NativeMemory.Free((void*)p);
        }
    }

    /// <summary>Reads any tensor of either backend to host F32 (CPU tensors are host memory).</summary>
    public static float[] Read(IBackend backend, Tensor t)
    {
        var dst = new float[t.Length];
        backend.Download(t, dst);
        return dst;
    }

    private static RopeTable Table(OpCase c, float theta, float magnitude)
    {
        int half = c.Rot / 2;
        var inv = new float[half];
        for (int j = 0; j < half; j++) inv[j] = (float)Math.Pow(theta, -2.0 * j / c.Rot);
        return new RopeTable
        {
            Method = "check", InvFreq = inv, Magnitude = magnitude,
            QueryScale = c.QueryScale ? new QueryScale(4096f, 0) : null, Remap = c.Remap,
        };
    }

    private static List<Output> Execute(IBackend b, OpCase c, Inputs inp, out string guardReport)
    {
        using var s = new Scope(b);
        var outputs = new List<Output>();
        Tensor Out(int rows, int cols, string name) => s.Make(DType.F32, rows, cols, [], guard: true, name: name);
        switch (c.Op)
        {
            case OpKind.Embedding:
            {
                var table = s.Make(c.Weight, c.Out, c.N, inp.W);
                var dst = Out(c.T, c.N, "dst");
                b.Embedding(inp.Tokens, table, dst);
                outputs.Add(new("dst", Read(b, dst)));
                break;
            }
            case OpKind.RmsNorm:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X);
                var w = s.Make(DType.F32, 1, c.N, inp.W);
                var dst = Out(c.T, c.N, "dst");
                b.RmsNorm(x, w, dst, 1e-5f, c.Compute);
                outputs.Add(new("dst", Read(b, dst)));
                break;
            }
            case OpKind.AddRmsNorm:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X, guard: true, name: "x");
                var y = s.Make(DType.F32, c.T, c.N, inp.Y, guard: true, name: "y");
                var w = s.Make(DType.F32, 1, c.N, inp.W);
                b.AddRmsNorm(x, y, w, y, 1e-5f, c.Compute);   // dst aliases y, as the forward pass calls it
                outputs.Add(new("x", Read(b, x)));
                outputs.Add(new("dst", Read(b, y)));
                break;
            }
            case OpKind.MatMul:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X);
                var w = s.Make(c.Weight, c.Out, c.N, inp.W);
                var dst = Out(c.T, c.Out, "dst");
                b.MatMul(x, w, dst);
                outputs.Add(new("dst", Read(b, dst)));
                break;
            }
            case OpKind.SwiGlu or OpKind.Add:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X);
                var y = s.Make(DType.F32, c.T, c.N, inp.Y);
                var dst = Out(c.T, c.N, "dst");
                if (c.Op == OpKind.Add) b.Add(x, y, dst);
                else b.SwiGlu(x, y, dst, c.Compute);
                outputs.Add(new("dst", Read(b, dst)));
                break;
            }
            case OpKind.Round:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X, guard: true, name: "x");
                b.Round(x, c.Compute);
                outputs.Add(new("x", Read(b, x)));
                break;
            }
            case OpKind.Argmax:
            {
                var x = s.Make(DType.F32, c.T, c.N, inp.X);
                var idx = new int[c.T];
                b.Argmax(x, idx);
                outputs.Add(new("index", [.. idx.Select(i => (float)i)]));
                break;
            }
            default:
                RunAttentionFamily(b, s, c, inp, outputs);
                break;
        }
        guardReport = s.CheckGuards();
        return outputs;
    }

    private static void RunAttentionFamily(IBackend b, Scope s, OpCase c, Inputs inp, List<Output> outputs)
    {
        int hd = c.HeadDim, qDim = c.Heads * hd, kvDim = c.KvHeads * hd, ctx = c.StartPos + c.T, layer = 1;
        var cache = s.Cache(2, ctx + 3, c.KvHeads, hd, farKeys: c.Remap is not null);
        var table = Table(c, c.Theta, c.Magnitude);
        bool remap = c.Remap is not null;
        if (c.Op == OpKind.Rope)
        {
            // Earlier positions first (so the cache rows around the new ones are filled), then the checked call.
            int q0 = c.StartPos * qDim, k0 = c.StartPos * kvDim;
            var q = s.Make(DType.F32, c.T, qDim, inp.Q.AsSpan(q0), guard: true, name: "q");
            var k = s.Make(DType.F32, c.T, kvDim, inp.K.AsSpan(k0), guard: true, name: "k");
            var v = s.Make(DType.F32, c.T, kvDim, inp.V.AsSpan(k0));
            var qFar = remap ? s.Make(DType.F32, c.T, qDim, [], guard: true, name: "qFar") : null;
            b.Rope(q, k, v, cache, layer, c.StartPos, table, c.Compute, qFar);
            outputs.Add(new("q", Read(b, q)));
            outputs.Add(new("k", Read(b, k)));
            outputs.Add(new("cache.K", Read(b, cache.K)));
            outputs.Add(new("cache.V", Read(b, cache.V)));
            if (remap)
            {
                outputs.Add(new("qFar", Read(b, qFar!)));
                outputs.Add(new("cache.KFar", Read(b, cache.KFar!)));
            }
            return;
        }
        // Fill every layer's positions [0, ctx) through Rope, as a prefill would.
        for (int l = 0; l < cache.NumLayers; l++)
        {
            var q = s.Make(DType.F32, ctx, qDim, inp.Q);
            var k = s.Make(DType.F32, ctx, kvDim, inp.K);
            var v = s.Make(DType.F32, ctx, kvDim, inp.V);
            var qFar = remap ? s.Make(DType.F32, ctx, qDim, []) : null;
            b.Rope(q, k, v, cache, l, 0, table, c.Compute, qFar);
            if (c.Op == OpKind.Attention && l == layer)
            {
                var qt = q.SliceRows(c.StartPos, c.T);
                var dst = s.Make(DType.F32, c.T, qDim, [], guard: true, name: "dst");
                b.Attention(qt, cache, layer, c.StartPos, dst, c.Compute, remap ? new FarQueries(qFar!.SliceRows(c.StartPos, c.T), c.Remap!.Window) : null);
                outputs.Add(new("dst", Read(b, dst)));
            }
        }
        if (c.Op == OpKind.Rerotate)
        {
            var to = Table(c, c.Theta * 4.5f, c.Magnitude * 1.1f);
            b.RerotateCache(cache, ctx, table, to);
            outputs.Add(new("cache.K", Read(b, cache.K)));
        }
    }
}

// CpuBackend: memory (Alloc alignment and zeroing, Upload aliasing, Download), shape checks, and that each IBackend
// op equals the CpuOps it wraps, plus the worker pool and the read-bandwidth probe. Run: dotnet test tests/Tests.csproj --filter "FullyQualifiedName~CpuBackendTests"
using LlamaRun.Core;
using LlamaRun.Backends;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;
using Xunit;
using static LlamaRun.Tests.CpuOpsTests;

namespace LlamaRun.Tests;

public unsafe class CpuBackendTests
{
    private readonly CpuBackend _cpu = new();

    private Tensor Put(float[] data, int rows, int cols)
    {
        var t = _cpu.Alloc(DType.F32, rows, cols);
        data.AsSpan().CopyTo(new Span<float>((void*)t.Pointer, data.Length));
        return t;
    }

    [Fact]
    public void AllocIsAlignedZeroedAndFreed()
    {
        using var t = _cpu.Alloc(DType.BF16, 33, 7);
        Assert.Equal(0, t.Pointer % 64);
        Assert.True(new ReadOnlySpan<byte>((void*)t.Pointer, (int)t.ByteLength).IndexOfAnyExcept((byte)0) < 0);
        using var empty = _cpu.Alloc(DType.F32, 0, 5);
        var dst = Array.Empty<float>();
        _cpu.Download(empty, dst);
        using var large = _cpu.Alloc(DType.F32, 1300, 1024);   // 5.1 MB: huge-page aligned
        Assert.Equal(0, large.Pointer % (2 << 20));
        Assert.True(new ReadOnlySpan<byte>((void*)large.Pointer, (int)large.ByteLength).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void UploadAliasesAndDownloadCopies()
    {
        var host = new float[] { 1, 2, 3, 4, 5, 6 };
        fixed (float* p = host)
        {
            var t = _cpu.Upload(DType.F32, 2, 3, (nint)p);
            Assert.Equal((nint)p, t.Pointer);
            host[4] = 50;
            var back = new float[6];
            _cpu.Download(t, back);
            Assert.Equal([1, 2, 3, 4, 50, 6], back);
            var e = Assert.Throws<ArgumentException>(() => _cpu.Download(t, new float[5]));
            Assert.Contains("dst holds 5", e.Message);
        }
        Assert.Throws<ArgumentException>(() => _cpu.Upload(DType.F32, 2, 3, 0));
    }

    [Fact]
    public void ShapeViolationsThrowOneClearError()
    {
        using var x = _cpu.Alloc(DType.F32, 3, 8);
        using var w = _cpu.Alloc(DType.BF16, 5, 9);
        using var dst = _cpu.Alloc(DType.F32, 3, 5);
        Assert.Contains("inner sizes 9 != 8", Assert.Throws<ArgumentException>(() => _cpu.MatMul(x, w, dst)).Message);
        using var w2 = _cpu.Alloc(DType.BF16, 4, 8);
        Assert.Contains("expected [3, 4]", Assert.Throws<ArgumentException>(() => _cpu.MatMul(x, w2, dst)).Message);
        using var xb = _cpu.Alloc(DType.BF16, 3, 8);
        Assert.Contains("expected dtype F32", Assert.Throws<ArgumentException>(() => _cpu.Add(xb, x, x)).Message);
        using var other = new CpuBackend();
        using var foreign = other.Alloc(DType.F32, 3, 8);
        Assert.Contains("belongs to backend", Assert.Throws<ArgumentException>(() => _cpu.Add(foreign, x, x)).Message);
        using var table = _cpu.Alloc(DType.F32, 10, 8);
        Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.Embedding([1, 10, 2], table, x));
        Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.Embedding([1, -1, 2], table, x));

        using var cache = _cpu.AllocKvCache(2, 6, 2, 4);
        using var q = _cpu.Alloc(DType.F32, 3, 16);
        using var k = _cpu.Alloc(DType.F32, 3, 8);
        var rope = CpuOpsAttentionTests.Table(4, 10000);
        Assert.Contains("outside the cache", Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.Rope(q, k, k, cache, 0, 4, rope)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.Rope(q, k, k, cache, 2, 0, rope));
        Assert.Contains("exceeds head dim", Assert.Throws<ArgumentException>(() => _cpu.Rope(q, k, k, cache, 0, 0, CpuOpsAttentionTests.Table(8, 10000))).Message);
        using var q3 = _cpu.Alloc(DType.F32, 3, 12);
        Assert.Contains("kv heads", Assert.Throws<ArgumentException>(() => _cpu.Attention(q3, cache, 0, 0, q3)).Message);
        using var q18 = _cpu.Alloc(DType.F32, 3, 18);
        Assert.Contains("whole number of heads", Assert.Throws<ArgumentException>(() => _cpu.Attention(q18, cache, 0, 0, q18)).Message);
        Assert.Contains("rotary dims differ", Assert.Throws<ArgumentException>(() => _cpu.RerotateCache(cache, 3, rope, CpuOpsAttentionTests.Table(2, 10000))).Message);
        using var empty = _cpu.Alloc(DType.F32, 2, 0);
        Assert.Contains("empty rows", Assert.Throws<ArgumentException>(() => _cpu.Argmax(empty, new int[2])).Message);
    }

    [Fact]
    public void LayerStepMatchesOps()
    {
        // One attention block through the backend (cache layer 1 of 2, two calls: prefill then decode) vs CpuOps.
        const int heads = 4, kvHeads = 2, hd = 16, maxSeq = 12, hidden = 64, layers = 2;
        int kvDim = kvHeads * hd;
        var table = CpuOpsAttentionTests.Table(hd, 10000, 1.05f);
        using var cache = _cpu.AllocKvCache(layers, maxSeq, kvHeads, hd);
        var kRef = new float[maxSeq * kvDim];
        var vRef = new float[maxSeq * kvDim];
        int start = 0;
        foreach (int tokens in new[] { 5, 1 })
        {
            var x = Uniform(tokens * hidden, tokens);
            var norm = Uniform(hidden, 1);
            var wq = Uniform(heads * hd * hidden, 2).Select(DTypes.F32ToBF16).ToArray();
            var wk = Uniform(kvDim * hidden, 3).Select(DTypes.F32ToBF16).ToArray();
            fixed (ushort* wqp = wq, wkp = wk)
            {
                using var xt = Put(x, tokens, hidden);
                using var nt = Put(norm, 1, hidden);
                var wqt = _cpu.Upload(DType.BF16, heads * hd, hidden, (nint)wqp);
                var wkt = _cpu.Upload(DType.BF16, kvDim, hidden, (nint)wkp);
                using var h = _cpu.Alloc(DType.F32, tokens, hidden);
                using var q = _cpu.Alloc(DType.F32, tokens, heads * hd);
                using var k = _cpu.Alloc(DType.F32, tokens, kvDim);
                using var v = _cpu.Alloc(DType.F32, tokens, kvDim);
                using var o = _cpu.Alloc(DType.F32, tokens, heads * hd);
                _cpu.RmsNorm(xt, nt, h, 1e-5f);
                _cpu.MatMul(h, wqt, q);
                _cpu.MatMul(h, wkt, k);
                _cpu.MatMul(h, wkt, v);
                _cpu.Rope(q, k, v, cache, 1, start, table);
                _cpu.Attention(q, cache, 1, start, o);

                var hr = new float[tokens * hidden];
                var qr = new float[tokens * heads * hd];
                var kr = new float[tokens * kvDim];
                var vr = new float[tokens * kvDim];
                var or = new float[tokens * heads * hd];
                fixed (float* xp = x, np = norm, hp = hr, qp = qr, kp = kr, vp = vr, op = or, kcp = kRef, vcp = vRef)
                {
                    CpuOps.RmsNorm(xp, np, hp, tokens, hidden, 1e-5f);
                    CpuOps.MatMul(hp, wqp, qp, DType.BF16, tokens, hidden, heads * hd);
                    CpuOps.MatMul(hp, wkp, kp, DType.BF16, tokens, hidden, kvDim);
                    CpuOps.MatMul(hp, wkp, vp, DType.BF16, tokens, hidden, kvDim);
                    CpuOps.Rope(qp, kp, vp, kcp, vcp, table, new RopeParams(tokens, heads, kvHeads, hd, start, 1));
                    CpuOps.Attention(qp, kcp, vcp, op, new AttentionParams(tokens, heads, kvHeads, hd, start));
                }
                var got = new float[or.Length];
                _cpu.Download(o, got);
                Assert.Equal(or, got);
            }
            start += tokens;
        }
        var cacheK = new float[layers * maxSeq * kvDim];
        _cpu.Download(cache.K, cacheK);
        Assert.True(cacheK.AsSpan(0, maxSeq * kvDim).IndexOfAnyExcept(0f) < 0, "layer 0 of the cache was written");
        Assert.Equal(kRef, cacheK.AsSpan(maxSeq * kvDim).ToArray());
    }

    [Fact]
    public void ArgmaxPerRow()
    {
        using var x = Put([1, 3, 3, -1, float.NaN, 2, 0, -0f, 0], 3, 3);
        var dst = new int[3];
        _cpu.Argmax(x, dst);
        Assert.Equal([1, 1, 0], dst);
    }

    [Fact]
    public void PoolRunsEveryItemOnceAndPropagatesErrors()
    {
        for (int round = 0; round < 200; round++)
        {
            int n = round % 37 + 1;
            var hits = new int[n];
            CpuParallel.For(n, i => Interlocked.Increment(ref hits[i]));
            Assert.All(hits, h => Assert.Equal(1, h));
        }
        var nested = new int[16];
        CpuParallel.For(4, i => CpuParallel.For(4, j => Interlocked.Increment(ref nested[i * 4 + j])));
        Assert.All(nested, h => Assert.Equal(1, h));
        var e = Assert.Throws<InvalidOperationException>(() => CpuParallel.For(50, i => { if (i == 17) throw new InvalidOperationException("item 17"); }));
        Assert.Equal("item 17", e.Message);
        Thread.Sleep(5); // let the workers fall asleep, then wake them
        var after = new int[64];
        CpuParallel.For(64, i => after[i] = i);
        Assert.Equal(Enumerable.Range(0, 64), after);
    }

    [Fact]
    public void ReadBandwidthSumsEveryElementOnAnyThreadCount()
    {
        foreach (long bytes in new long[] { 4096, 1 << 20, (1 << 20) + 4096 * 3 })
        {
            float* p = CpuReadBandwidth.AllocFilled(bytes);
            try
            {
                p[bytes / 4 - 1] = 2f;   // the last element counts too
                foreach (int threads in new[] { 1, 0 })
                    Assert.Equal(bytes / 4 + 1, (long)CpuReadBandwidth.Sum(p, bytes, threads));
            }
            finally { System.Runtime.InteropServices.NativeMemory.AlignedFree(p); }
        }
        double gbps = CpuReadBandwidth.Measure(0, passes: 2, bytes: 1 << 24);
        Assert.True(gbps > 0 && double.IsFinite(gbps), $"{gbps} GB/s");
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuReadBandwidth.Measure(1, bytes: 1000));
    }
}

// Token sampling over one row of logits: repetition penalty, top-k, temperature, top-p, min-p, seeded RNG.
// Temperature 0 is greedy (argmax after the repetition penalty). Same seed and logits give the same token.
using LlamaRun.Backends.Cpu;

namespace LlamaRun.Text;

/// <summary>Sampling settings; Temperature 0 means greedy, TopK 0 and TopP 1 and MinP 0 mean "off".</summary>
public sealed record SamplerOptions(
    float Temperature = 0.8f,
    int TopK = 40,
    float TopP = 0.95f,
    float MinP = 0.05f,
    float RepetitionPenalty = 1.0f,
    int RepetitionWindow = 64,
    ulong Seed = 0)
{
    public static SamplerOptions Greedy { get; } = new(Temperature: 0f);

    /// <summary>Throws ArgumentException naming the first out-of-range setting.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentException($"--temp must be >= 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"--top-k must be >= 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"--top-p must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP < 1)) throw new ArgumentException($"--min-p must be in [0, 1), got {MinP}");
        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty)) throw new ArgumentException($"--repeat-penalty must be > 0, got {RepetitionPenalty}");
        if (RepetitionWindow < 0) throw new ArgumentException($"--repeat-last-n must be >= 0, got {RepetitionWindow}");
    }
}

/// <summary>Picks the next token from logits; owns its random state.</summary>
public sealed class Sampler
{
    private readonly SamplerOptions _options;
    private ulong _state;
    private (int Id, float Value)[] _candidates = [];

    public Sampler(SamplerOptions options)
    {
        options.Validate();
        _options = options;
        _state = options.Seed ^ 0x9E3779B97F4A7C15UL;
        if (_state == 0) _state = 1;
    }

    /// <summary>Samples a token id; logits are modified in place by the repetition penalty.</summary>
    public int Sample(Span<float> logits, ReadOnlySpan<int> history)
    {
        ApplyRepetitionPenalty(logits, history);
        if (_options.Temperature == 0f) return CpuOps.Argmax(logits);   // the one argmax rule (NaN ranks above any number)

        int n = Filter(logits);
        var c = _candidates.AsSpan(0, n);
        // Softmax over the survivors of top-k, at temperature T; the max is subtracted for stability.
        float max = c[0].Value;
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            float p = MathF.Exp((c[i].Value - max) / _options.Temperature);
            c[i].Value = p;
            sum += p;
        }
        // Top-p keeps the smallest prefix (sorted by probability) whose mass reaches P; min-p drops tokens below MinP * pmax.
        double cutoff = _options.TopP * sum, acc = 0, minKeep = _options.MinP * c[0].Value;
        int keep = 0;
        while (keep < n && (keep == 0 || c[keep].Value >= minKeep))
        {
            acc += c[keep].Value;
            keep++;
            if (acc >= cutoff) break;
        }
        double r = NextDouble() * acc, run = 0;
        for (int i = 0; i < keep; i++)
        {
            run += c[i].Value;
            if (r < run) return c[i].Id;
        }
        return c[keep - 1].Id;
    }


    private void ApplyRepetitionPenalty(Span<float> logits, ReadOnlySpan<int> history)
    {
        float penalty = _options.RepetitionPenalty;
        if (penalty == 1f || _options.RepetitionWindow == 0) return;
        var recent = history[Math.Max(0, history.Length - _options.RepetitionWindow)..];
        var seen = new HashSet<int>();
        foreach (int id in recent)
        {
            if ((uint)id >= (uint)logits.Length || !seen.Add(id)) continue;
            // As in CTRL and llama.cpp: shrink positive logits, push negative ones further down.
            logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
        }
    }

    // Puts the candidates in order of logit (descending, ties by id): only the top-k when TopK > 0, selected with a
    // k-sized min-heap so a 128k vocabulary is not sorted every step. Returns how many candidates remain.
    private int Filter(ReadOnlySpan<float> logits)
    {
        if (_candidates.Length < logits.Length) _candidates = new (int, float)[logits.Length];
        int k = _options.TopK > 0 ? _options.TopK : int.MaxValue, n = 0;
        if (k < logits.Length)
        {
            var heap = new PriorityQueue<int, (float Value, int NegId)>(k);
            for (int i = 0; i < logits.Length; i++)
            {
                float v = logits[i];
                if (float.IsNaN(v)) continue;
                if (heap.Count < k) heap.Enqueue(i, (v, -i));
                else if (heap.TryPeek(out _, out var min) && (v > min.Value || (v == min.Value && -i > min.NegId)))
                    heap.EnqueueDequeue(i, (v, -i));
            }
            while (heap.TryDequeue(out int id, out var key)) _candidates[n++] = (id, key.Value);
        }
        else
            for (int i = 0; i < logits.Length; i++)
                if (!float.IsNaN(logits[i])) _candidates[n++] = (i, logits[i]);
        if (n == 0) throw new InvalidOperationException("every logit is NaN");
        _candidates.AsSpan(0, n).Sort(static (a, b) => a.Value != b.Value ? b.Value.CompareTo(a.Value) : a.Id.CompareTo(b.Id));
        return n;
    }

    // xorshift64* (Vigna); 53 random bits to a double in [0, 1).
    private double NextDouble()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return ((_state * 0x2545F4914F6CDD1DUL) >> 11) * (1.0 / (1UL << 53));
    }
}

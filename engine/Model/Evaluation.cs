// Perplexity by the held-out protocol: up to K consecutive non-overlapping windows of N tokens from the start,
// each window run from position 0 and scoring every token but its first. Used by `llama-run perplexity` and tests.
namespace LlamaRun.Model;

/// <summary>Windows used, tokens scored, exp(mean NLL), and the per-token NLLs in order.</summary>
public sealed record PerplexityResult(int Windows, long Tokens, double Ppl, double[] Nll);

/// <summary>Negative log-likelihood and perplexity of token sequences under a model.</summary>
public static class Evaluation
{
    /// <summary>Scores up to maxWindows windows of ctx tokens from the start of ids.</summary>
    public static PerplexityResult Perplexity(Llama model, ReadOnlySpan<int> ids, int ctx, int maxWindows)
    {
        if (ctx < 2) throw new ArgumentException($"a window needs at least 2 tokens, got {ctx}");
        if (ctx > model.MaxSeq) throw new ArgumentException($"windows of {ctx} tokens do not fit the context of {model.MaxSeq}");
        int w = (int)Math.Min(maxWindows, ids.Length / ctx);
        if (w == 0) throw new ArgumentException($"the text has {ids.Length} tokens, fewer than one window of {ctx}");
        int vocab = model.VocabSize, chunk = model.MaxBatch;
        var logits = new float[(long)chunk * vocab];
        var nll = new double[(long)w * (ctx - 1)];
        long k = 0;
        for (int win = 0; win < w; win++)
        {
            var window = ids.Slice(win * ctx, ctx);
            model.Reset();
            // Fed in pieces of MaxBatch tokens; ropeLength keeps one RoPE table for the whole window, as one forward pass would.
            for (int start = 0; start < ctx; start += chunk)
            {
                int n = Math.Min(chunk, ctx - start);
                model.Forward(window.Slice(start, n), start, LogitsRows.All, logits, ropeLength: ctx);
                for (int i = 0; i < n && start + i + 1 < ctx; i++)
                    nll[k++] = Nll(logits.AsSpan(i * vocab, vocab), window[start + i + 1]);
            }
        }
        double sum = 0;
        foreach (double v in nll) sum += v;
        return new PerplexityResult(w, k, Math.Exp(sum / k), nll);
    }

    /// <summary>-log softmax(logits)[target], max-subtracted, accumulated in double.</summary>
    public static double Nll(ReadOnlySpan<float> logits, int target)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) max = MathF.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        return Math.Log(sum) + max - logits[target];
    }
}

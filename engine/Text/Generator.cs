// The generation loop: prompt -> prefill -> sample/decode until EOS, the token budget or the context is used up.
// Text is streamed through a StreamingDecoder so no UTF-8 character is split. Run: `llama-run -p "It was"`.
using System.Diagnostics;
using LlamaRun.Model;

namespace LlamaRun.Text;

/// <summary>Token counts and timings of one generation (prompt = prefill, decode = generated tokens).</summary>
public sealed record GenerationStats(int PromptTokens, int GeneratedTokens, double PromptSeconds, double DecodeSeconds)
{
    public double PromptTokensPerSecond => PromptSeconds > 0 ? PromptTokens / PromptSeconds : 0;
    public double DecodeTokensPerSecond => DecodeSeconds > 0 ? GeneratedTokens / DecodeSeconds : 0;
}

/// <summary>Runs a prompt through a model and streams sampled text.</summary>
public static class Generator
{
    /// <summary>Generates up to maxNewTokens (negative: until EOS or the context is full) and streams text to onText.</summary>
    public static GenerationStats Generate(Llama model, Tokenizer tokenizer, string prompt, int maxNewTokens,
        SamplerOptions options, Action<string> onText) =>
        Generate(model, tokenizer, tokenizer.Encode(prompt, addBos: true), maxNewTokens, options, onText);

    /// <summary>The same from prompt ids already encoded (with BOS).</summary>
    public static GenerationStats Generate(Llama model, Tokenizer tokenizer, IReadOnlyList<int> promptIds, int maxNewTokens,
        SamplerOptions options, Action<string> onText)
    {
        var tokens = new List<int>(promptIds);
        if (tokens.Count == 0) throw new ArgumentException("the tokenizer has no BOS token and the prompt is empty");
        if (tokens.Count >= model.MaxSeq)
            throw new ArgumentException($"the prompt has {tokens.Count} tokens and does not fit a context of {model.MaxSeq} (raise --ctx)");

        var stop = new HashSet<int>(model.Config.EosTokenIds);
        if (tokenizer.EosId >= 0) stop.Add(tokenizer.EosId);
        var sampler = new Sampler(options);
        var decoder = tokenizer.CreateStreamingDecoder();
        foreach (int t in tokens) decoder.Append(t);   // prime the decoder so the first generated piece is spaced right

        var logits = new float[model.VocabSize];
        model.Reset();
        var clock = Stopwatch.StartNew();
        model.Forward(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(tokens), 0, LogitsRows.Last, logits);
        double promptSeconds = clock.Elapsed.TotalSeconds;
        int promptTokens = tokens.Count;

        clock.Restart();
        int generated = 0, budget = maxNewTokens < 0 ? int.MaxValue : maxNewTokens;
        while (generated < budget)
        {
            int next = sampler.Sample(logits, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(tokens));
            if (stop.Contains(next)) break;
            tokens.Add(next);
            generated++;
            onText(decoder.Append(next));
            if (generated == budget || tokens.Count >= model.MaxSeq) break;
            model.Forward([next], tokens.Count - 1, LogitsRows.Last, logits);
        }
        onText(decoder.Flush());
        return new GenerationStats(promptTokens, generated, promptSeconds, clock.Elapsed.TotalSeconds);
    }
}

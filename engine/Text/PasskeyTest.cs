// The passkey retrieval test (`llama-run passkey`, `rope-opt detect`): a random 5-digit key hidden at a depth of
// filler text that fills the context, asked for greedily; a graded signal too, the mean NLL of the key's tokens.
using System.Globalization;
using System.Text;
using LlamaRun.Backends.Cpu;
using LlamaRun.Model;

namespace LlamaRun.Text;

/// <summary>Builds passkey prompts and scores a model on them.</summary>
public static class PasskeyTest
{
    private const string Intro = "There is an important piece of information hidden inside a lot of irrelevant text. " +
                                 "Find it and memorize it. I will quiz you about it.\n";
    private const string Filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";
    private const string Question = "\nWhat is the pass key? The pass key is";

    /// <summary>Correct answers and mean key NLL per depth over `trials` random keys each (keys drawn from seed).</summary>
    public static (int[] Correct, double[] KeyNll) Evaluate(Llama model, Tokenizer tok, int ctx, int trials, ulong seed, double[] depths)
    {
        var rng = new Random(unchecked((int)seed));
        var correct = new int[depths.Length];
        var keyNll = new double[depths.Length];
        for (int d = 0; d < depths.Length; d++)
            for (int t = 0; t < trials; t++)
            {
                string key = rng.Next(10000, 100000).ToString(CultureInfo.InvariantCulture);
                var (text, prompt) = BuildPrompt(tok, key, depths[d], ctx - 8);
                var (answer, nll) = Answer(model, tok, text, prompt, key, 8);
                if (answer.Contains(key, StringComparison.Ordinal)) correct[d]++;
                keyNll[d] += nll / trials;
            }
        return (correct, keyNll);
    }

    /// <summary>Intro, filler with the key sentence at the given depth (0 = start, 1 = end), question; at most maxTokens.</summary>
    public static (string Text, int[] Ids) BuildPrompt(Tokenizer tok, string key, double depth, int maxTokens)
    {
        string needle = $"The pass key is {key}. Remember it. {key} is the pass key.\n";
        int fixedTokens = tok.Encode(Intro + needle + Question, addBos: true).Length;
        int fillerTokens = Math.Max(1, tok.Encode(Filler + Filler, addBos: false).Length / 2);
        int count = Math.Max(0, (maxTokens - fixedTokens) / fillerTokens);
        while (true)
        {
            int before = (int)Math.Round(count * depth);
            var text = new StringBuilder(Intro);
            for (int i = 0; i < before; i++) text.Append(Filler);
            text.Append(needle);
            for (int i = before; i < count; i++) text.Append(Filler);
            text.Append(Question);
            var ids = tok.Encode(text.ToString(), addBos: true);
            if (ids.Length <= maxTokens) return (text.ToString(), ids);
            if (count == 0) throw new ArgumentException($"--ctx {maxTokens + 8} is too short for the passkey prompt ({ids.Length} tokens)");
            count = Math.Max(0, count - Math.Max(1, (ids.Length - maxTokens) / fillerTokens));
        }
    }

    // Greedy answer of maxNew tokens, and the mean NLL of the key's tokens when they are fed after the question
    // (a graded retrieval signal for models too weak to copy the key outright).
    private static (string Answer, double KeyNll) Answer(Llama model, Tokenizer tok, string text, int[] prompt, string key, int maxNew)
    {
        var logits = new float[model.VocabSize];
        model.Reset();
        model.Forward(prompt, 0, LogitsRows.Last, logits);
        var afterPrompt = (float[])logits.Clone();

        var decoder = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        int pos = prompt.Length;
        for (int i = 0; i < maxNew && pos < model.MaxSeq; i++)
        {
            int next = CpuOps.Argmax(logits);
            sb.Append(decoder.Append(next));
            if (i + 1 < maxNew) model.Forward([next], pos++, LogitsRows.Last, logits);
        }
        sb.Append(decoder.Flush());

        var full = tok.Encode(text + " " + key, addBos: true);
        if (full.Length <= prompt.Length || !full.AsSpan(0, prompt.Length).SequenceEqual(prompt) || full.Length > model.MaxSeq)
            return (sb.ToString(), double.NaN);
        double nll = Evaluation.Nll(afterPrompt, full[prompt.Length]);
        for (int i = prompt.Length; i + 1 < full.Length; i++)
        {
            model.Forward([full[i]], i, LogitsRows.Last, logits);
            nll += Evaluation.Nll(logits, full[i + 1]);
        }
        return (sb.ToString(), nll / (full.Length - prompt.Length));
    }

}

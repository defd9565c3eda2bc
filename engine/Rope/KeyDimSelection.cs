// DPE's key-dimension selection (ROPE.md 6.3): for each layer, KV head and rotary pair j, the mean over tokens of
// |q_j| |k_j| (the norms of the pair (x[j], x[j + rotary/2]) of q and k after the projections, before rotation; q over
// the KV head's query heads), and the k pairs of highest score in each layer and KV head take the grouped positions of
// an index remap. Used by `rope-opt detect --topk K`. Test: RemapRopeTests.KeyDim*.
using LlamaRun.Core;
using LlamaRun.Model;

namespace LlamaRun.Rope;

/// <summary>Sums of |q_j| |k_j| per layer, KV head and pair over the tokens seen; Top(k) picks the key dims.</summary>
public sealed class KeyDimScores(int layers, int heads, int kvHeads, int headDim, int rotaryDim)
{
    private readonly double[] _sum = new double[layers * kvHeads * (rotaryDim / 2)];
    private readonly long[] _tokens = new long[layers];

    public int Pairs => rotaryDim / 2;

    /// <summary>Adds the rows of q [T, heads*headDim] and k [T, kvHeads*headDim] of one layer.</summary>
    public void Add(int layer, ReadOnlySpan<float> q, ReadOnlySpan<float> k, int tokens)
    {
        int half = Pairs, group = heads / kvHeads, qDim = heads * headDim, kvDim = kvHeads * headDim;
        if (q.Length < (long)tokens * qDim || k.Length < (long)tokens * kvDim) throw new ArgumentException($"q or k holds fewer than {tokens} rows");
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group;
                var qh = q.Slice(t * qDim + h * headDim, headDim);
                var kh = k.Slice(t * kvDim + kvh * headDim, headDim);
                int row = (layer * kvHeads + kvh) * half;
                for (int j = 0; j < half; j++)
                    _sum[row + j] += Math.Sqrt((double)qh[j] * qh[j] + (double)qh[j + half] * qh[j + half])
                                     * Math.Sqrt((double)kh[j] * kh[j] + (double)kh[j + half] * kh[j + half]);
            }
        _tokens[layer] += tokens;
    }

    /// <summary>The mean of |q_j| |k_j| over the tokens and query heads of a layer and KV head.</summary>
    public double Score(int layer, int kvHead, int pair) =>
        _tokens[layer] == 0 ? 0 : _sum[(layer * kvHeads + kvHead) * Pairs + pair] / (_tokens[layer] * (heads / kvHeads));

    /// <summary>The k highest-scoring pairs of every layer and KV head (ties to the lower pair).</summary>
    public RopeKeyDims Top(int k)
    {
        if (k < 1 || k > Pairs) throw new ArgumentException($"--topk {k} must be between 1 and the {Pairs} rotary pairs");
        for (int l = 0; l < layers; l++)
            if (_tokens[l] == 0) throw new InvalidOperationException($"no tokens were scored in layer {l}");
        var selected = new bool[layers * kvHeads * Pairs];
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++)
                foreach (int j in Enumerable.Range(0, Pairs).OrderByDescending(j => Score(l, h, j)).ThenBy(j => j).Take(k))
                    selected[(l * kvHeads + h) * Pairs + j] = true;
        return new RopeKeyDims(layers, kvHeads, Pairs, selected);
    }
}

/// <summary>Runs a model over prompts and scores its key dimensions.</summary>
public static class KeyDimSelection
{
    /// <summary>The scores of the model's q/k projections over every prompt (each run from position 0).</summary>
    public static KeyDimScores Score(Llama model, IEnumerable<int[]> prompts)
    {
        var c = model.Config;
        var scores = new KeyDimScores(c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.RotaryDim);
        float[] q = [], k = [];
        model.ProjectionObserver = (layer, qt, kt) =>
        {
            if (q.Length < qt.Length) q = new float[qt.Length];
            if (k.Length < kt.Length) k = new float[kt.Length];
            model.Backend.Download(qt, q.AsSpan(0, (int)qt.Length));
            model.Backend.Download(kt, k.AsSpan(0, (int)kt.Length));
            scores.Add(layer, q, k, qt.Rows);
        };
        try
        {
            foreach (var prompt in prompts)
            {
                model.Reset();
                model.Forward(prompt, 0, LogitsRows.None, default);
            }
        }
        finally
        {
            model.ProjectionObserver = null;
        }
        return scores;
    }
}

// The one RoPE table format every backend's rotary op consumes (ROPE.md section 8).
// Producers (one file per method family in this folder) build it; the forward pass only reads it.
using LlamaRun.Kernels.Device;

namespace LlamaRun.Core;

/// <summary>Query-only logit multiplier lambda(layer, m) = max(1, ln(m+1)/ln(Context)) for layers >= SkipLayers.</summary>
public sealed record QueryScale(float Context, int SkipLayers)
{
    public float At(int layer, int position) => layer < SkipLayers ? 1f : RopeMath.QueryScale(position, Context);
}

/// <summary>
/// Index remap of ReRoPE, Leaky ReRoPE, Self-Extend and DPE (ROPE.md sections 2 and 6): a key at distance d = i - p from
/// query position i keeps its true distance while d &lt; Window; farther keys are scored as if pair j of the key sat at
/// Key(j, p) = div(p, Group[j]) and the query at Query(j, i) = div(i, Group[j]) + Window - Window / Group[j], with div
/// the floor of the quotient (Self-Extend, DPE) or the quotient itself (Floor false: Leaky ReRoPE). Group[j] = +inf
/// gives ReRoPE's constant distance Window; Group[j] = 1 the true distance. KeyDims (DPE's key-dimension selection)
/// keeps the grouped positions to the selected pairs of each layer and KV head; the others keep the true distance.
/// </summary>
public sealed record RopeRemap
{
    public RopeRemap(string kind, int window, float[] group, bool floor = true)
    {
        if (window < 1) throw new ArgumentException($"{kind}: remap window {window} must be at least 1");
        foreach (float g in group)
            if (!(g >= 1) || (floor && !float.IsPositiveInfinity(g) && g != MathF.Floor(g)))
                throw new ArgumentException($"{kind}: group size {g} must be {(floor ? "a whole number" : "a number")} of at least 1 (or +inf)");
        (Kind, Window, Group, Floor) = (kind, window, group, floor);
    }

    public string Kind { get; }
    public int Window { get; }
    public float[] Group { get; }
    public bool Floor { get; }

    /// <summary>The pairs of each layer and KV head that take the grouped positions (null: every pair, in every head).</summary>
    public RopeKeyDims? KeyDims { get; private init; }

    /// <summary>This remap with its grouped positions kept to the selected pairs of each layer and KV head.</summary>
    public RopeRemap WithKeyDims(RopeKeyDims keyDims)
    {
        if (keyDims.Pairs != Group.Length)
            throw new ArgumentException($"{Kind}: key dims select among {keyDims.Pairs} pairs, the table has {Group.Length}");
        return this with { KeyDims = keyDims };
    }

    /// <summary>Pair j's group size in layer and KV head: Group[j] where selected, 1 (the true distance) where not.</summary>
    public float GroupAt(int layer, int kvHead, int pair) => KeyDims is null || KeyDims.IsSelected(layer, kvHead, pair) ? Group[pair] : 1f;

    /// <summary>The group sizes of every KV head of layer, [kvHeads, pairs] row-major (Group repeated without KeyDims).</summary>
    public float[] LayerGroups(int layer, int kvHeads)
    {
        var g = new float[kvHeads * Group.Length];
        for (int h = 0; h < kvHeads; h++)
            for (int j = 0; j < Group.Length; j++) g[h * Group.Length + j] = GroupAt(layer, h, j);
        return g;
    }

    /// <summary>Grouped position of pair j of a key at position pos (the far branch).</summary>
    public float Key(int pair, int pos) => RopeMath.GroupedKey(pos, Group[pair], Floor ? 1 : 0);

    /// <summary>Grouped position of pair j of a query at position pos (the far branch).</summary>
    public float Query(int pair, int pos) => RopeMath.GroupedQuery(pos, Group[pair], Window, Floor ? 1 : 0);

    /// <summary>True when the key at keyPos is scored at grouped positions by the query at queryPos.</summary>
    public bool IsFar(int queryPos, int keyPos) => queryPos - keyPos >= Window;

    /// <summary>The relative position pair j sees between a query at i and a key at p (i - p in the window).</summary>
    public float Distance(int pair, int i, int p) => IsFar(i, p) ? Query(pair, i) - Key(pair, p) : i - p;

    /// <summary>Distance(pair, i, p) in one layer and KV head, where KeyDims may leave the pair at the true distance.</summary>
    public float Distance(int layer, int kvHead, int pair, int i, int p)
    {
        if (!IsFar(i, p)) return i - p;
        float g = GroupAt(layer, kvHead, pair);
        int floor = Floor ? 1 : 0;
        return RopeMath.GroupedQuery(i, g, Window, floor) - RopeMath.GroupedKey(p, g, floor);
    }

    public bool SameAs(RopeRemap? other) =>
        other is not null && Window == other.Window && Floor == other.Floor && Group.AsSpan().SequenceEqual(other.Group)
        && (KeyDims is null ? other.KeyDims is null : KeyDims.SameAs(other.KeyDims));

    public string Describe()
    {
        // Runs of equal group sizes: "8" when uniform, else "4x8,2x8,..." (size x pairs).
        var runs = new List<string>();
        for (int j = 0; j < Group.Length;)
        {
            int n = 1;
            while (j + n < Group.Length && Group[j + n] == Group[j]) n++;
            string g = float.IsPositiveInfinity(Group[j]) ? "inf" : Group[j].ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);
            runs.Add(n == Group.Length ? g : $"{g}x{n}");
            j += n;
        }
        return $"{Kind} window {Window}, group {string.Join(",", runs)}{(Floor ? "" : " (exact division)")}"
            + (KeyDims is { } kd ? $", grouped on {kd.Describe()}" : "");
    }
}

/// <summary>
/// DPE's key dimensions (ROPE.md 6.3): for each layer and KV head, the rotary pairs that take the grouped positions in
/// an index remap's far branch; Selected[(layer * KvHeads + kvHead) * Pairs + j]. Chosen per KV head rather than per
/// query head so the grouped keys are cached once per KV head (a GQA group shares one selection).
/// </summary>
public sealed record RopeKeyDims
{
    public RopeKeyDims(int layers, int kvHeads, int pairs, bool[] selected)
    {
        if (layers < 1 || kvHeads < 1 || pairs < 1) throw new ArgumentException($"key dims of {layers} layers x {kvHeads} KV heads x {pairs} pairs");
        if (selected.Length != layers * kvHeads * pairs)
            throw new ArgumentException($"key dims: {selected.Length} flags for {layers} layers x {kvHeads} KV heads x {pairs} pairs");
        (Layers, KvHeads, Pairs, Selected) = (layers, kvHeads, pairs, selected);
    }

    public int Layers { get; }
    public int KvHeads { get; }
    public int Pairs { get; }
    public bool[] Selected { get; }

    public bool IsSelected(int layer, int kvHead, int pair) => Selected[(layer * KvHeads + kvHead) * Pairs + pair];

    /// <summary>The selected pair indices of one layer and KV head, ascending.</summary>
    public int[] SelectedPairs(int layer, int kvHead) => [.. Enumerable.Range(0, Pairs).Where(j => IsSelected(layer, kvHead, j))];

    /// <summary>Throws unless these key dims were chosen for a model of this many layers and KV heads.</summary>
    public void CheckModel(int layers, int kvHeads)
    {
        if (layers != Layers || kvHeads != KvHeads)
            throw new ArgumentException($"the key dims were selected for {Layers} layers x {KvHeads} KV heads, the model has {layers} x {kvHeads}");
    }

    /// <summary>Throws unless layer (of a model with kvHeads KV heads) has a selection here.</summary>
    public void CheckLayer(int layer, int kvHeads)
    {
        if ((uint)layer >= (uint)Layers || kvHeads != KvHeads)
            throw new ArgumentException($"the key dims were selected for {Layers} layers x {KvHeads} KV heads, not for layer {layer} of {kvHeads} KV heads");
    }

    public bool SameAs(RopeKeyDims? other) =>
        other is not null && Layers == other.Layers && KvHeads == other.KvHeads && Pairs == other.Pairs && Selected.AsSpan().SequenceEqual(other.Selected);

    public string Describe()
    {
        int count = Selected.Count(s => s), heads = Layers * KvHeads;
        return count % heads == 0 ? $"{count / heads} of {Pairs} pairs a KV head" : $"{count} of {heads * Pairs} pairs";
    }
}

/// <summary>Per-pair inverse frequencies plus cos/sin magnitude, an optional query scale and an optional index remap.</summary>
public sealed record RopeTable
{
    /// <summary>Name of the method that produced the table, e.g. "yarn" or "dprope".</summary>
    public required string Method { get; init; }

    /// <summary>omega_j for pairs j = 0 .. rotaryDim/2 - 1, float32.</summary>
    public required float[] InvFreq { get; init; }

    /// <summary>cos and sin are multiplied by this (YaRN/LongRoPE attention_factor), so logits scale by its square.</summary>
    public float Magnitude { get; init; } = 1f;

    public QueryScale? QueryScale { get; init; }

    /// <summary>Distant keys scored at grouped positions (Self-Extend, DPE, ReRoPE); null for frequency-only methods.</summary>
    public RopeRemap? Remap { get; init; }

    public int RotaryDim => InvFreq.Length * 2;

    /// <summary>The context-extension factor the method was built for (1 for plain RoPE).</summary>
    public double Factor { get; init; } = 1.0;

    /// <summary>How many pairs turn slower than plain RoPE with the same base (0 for plain RoPE and ABF).</summary>
    public int InterpolatedPairs { get; init; }

    /// <summary>One line for logs: method, factor, interpolated pairs, magnitude and query scale.</summary>
    public string Describe()
    {
        var text = FormattableString.Invariant($"rope {Method}: factor {Factor:0.###}");
        if (Remap is null || InterpolatedPairs > 0) text += FormattableString.Invariant($", {InterpolatedPairs}/{InvFreq.Length} pairs interpolated");
        if (Magnitude != 1f) text += FormattableString.Invariant($", magnitude {Magnitude:0.####}");
        if (QueryScale is { } q) text += FormattableString.Invariant($", query scale log_{q.Context:0}(m+1) from layer {q.SkipLayers}");
        if (Remap is { } r) text += ", " + r.Describe();
        return text;
    }
}

// Device copies of RoPE InvFreq tables in a few fixed slots allocated at start-up; a table is uploaded again (in the
// stream's order, so kernels queued earlier still read the old contents) only when no slot holds its values.
// Exercised by the Rope and Rerotate cases of tests/GpuOpsTests.cs.
using ILGPU;
using ILGPU.Runtime;
using LlamaRun.Core;
using LlamaRun.Kernels;

namespace LlamaRun.Backends.Gpu;

internal sealed unsafe class GpuRopeTables(Accelerator accelerator, AcceleratorStream stream) : IDisposable
{
    private const int Slots = 4, MaxPairs = RopeKernels.MaxPairs;

    private readonly MemoryBuffer1D<float, Stride1D.Dense> _device = accelerator.Allocate1D<float>(Slots * MaxPairs);   // [Slots, MaxPairs]
    private readonly float[]?[] _content = new float[Slots][];
    private int _next;

    /// <summary>Device writes so far (a slot refilled, the key-dim groups replaced): a replayed decode step that read a table is stale once it changes.</summary>
    public long Uploads { get; private set; }

    private ArrayView<float> Slot(int slot, int pairs) => _device.View.SubView(slot * MaxPairs, pairs);

    /// <summary>The device copy of the table's InvFreq; never evicts the slot that holds keep's.</summary>
    public ArrayView<float> Get(RopeTable table, RopeTable? keep = null) => Get(table.InvFreq, keep?.InvFreq);

    /// <summary>The device copy of a per-pair array (InvFreq, or a remap's group sizes); never evicts the slot that holds keep.</summary>
    public ArrayView<float> Get(float[] inv, float[]? keep)
    {
        if (inv.Length > MaxPairs) throw new ArgumentException($"RoPE table has {inv.Length} pairs; at most {MaxPairs} are supported", nameof(inv));
        if (Find(inv) is int found) return Slot(found, inv.Length);
        int slot = _next;
        if (keep is not null && Find(keep) == slot) slot = (slot + 1) % Slots;
        _next = (slot + 1) % Slots;
        var copy = (float[])inv.Clone();   // the slot's record of what it holds (pageable: the copy is staged before return)
        _content[slot] = copy;
        Uploads++;
        var view = Slot(slot, inv.Length);
        fixed (float* h = copy) view.CopyFromCPUUnsafeAsync(stream, ref *h, copy.Length);
        return view;
    }

    private MemoryBuffer1D<float, Stride1D.Dense>? _keyDimGroups;
    private RopeKeyDims? _keyDims;
    private float[]? _keyDimSource;

    /// <summary>
    /// The group sizes of every KV head of layer, [kvHeads, pairs], for a remap with key dims: the whole model's
    /// [layers, kvHeads, pairs] is uploaded once per selection and sliced by layer.
    /// </summary>
    public ArrayView<float> LayerGroups(RopeRemap remap, int layer, int kvHeads)
    {
        var keyDims = remap.KeyDims ?? throw new ArgumentException("the remap has no key dims", nameof(remap));
        keyDims.CheckLayer(layer, kvHeads);
        int perLayer = kvHeads * remap.Group.Length;
        if (!ReferenceEquals(keyDims, _keyDims) || !ReferenceEquals(remap.Group, _keyDimSource))
        {
            var all = new float[keyDims.Layers * perLayer];
            for (int l = 0; l < keyDims.Layers; l++) remap.LayerGroups(l, kvHeads).CopyTo(all, l * perLayer);
            if (_keyDimGroups is not null)
            {
                stream.Synchronize();   // kernels queued earlier may still read the old selection
                _keyDimGroups.Dispose();
            }
            _keyDimGroups = accelerator.Allocate1D(all);
            Uploads++;
            (_keyDims, _keyDimSource) = (keyDims, remap.Group);
        }
        return _keyDimGroups!.View.SubView(layer * perLayer, perLayer);
    }

    private int? Find(float[] inv)
    {
        for (int s = 0; s < Slots; s++)
            if (_content[s] is { } c && c.AsSpan().SequenceEqual(inv)) return s;
        return null;
    }

    public void Dispose()
    {
        _device.Dispose();
        _keyDimGroups?.Dispose();
    }
}

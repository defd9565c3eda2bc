// Device copies of RoPE InvFreq tables in a few fixed slots allocated at start-up; a table is re-uploaded (stream
// ordered, so kernels queued earlier still see the old contents) only when no slot holds its values.
// Exercised by tests/BackendOpsTests.cs Rope and Rerotate.
using LlamaRun.Core;

namespace LlamaRun.Backends.Cuda;

internal sealed unsafe class RopeTableSlots(ulong device, nint stream)
{
    public const int Slots = 4, MaxPairs = 512;
    public const long Bytes = Slots * MaxPairs * 4L;   // [Slots, MaxPairs] f32

    private readonly float[]?[] _content = new float[Slots][];
    private int _next;

    private ulong Address(int slot) => device + (ulong)(slot * MaxPairs * 4);

    /// <summary>Device address of the table's InvFreq; never evicts the slot at <paramref name="keep"/>.</summary>
    public ulong Get(RopeTable table, ulong keep = 0)
    {
        float[] inv = table.InvFreq;
        if (inv.Length > MaxPairs) throw new ArgumentException($"RoPE table has {inv.Length} pairs; at most {MaxPairs} are supported", nameof(table));
        for (int s = 0; s < Slots; s++)
            if (_content[s] is { } c && c.AsSpan().SequenceEqual(inv)) return Address(s);
        int slot = _next;
        if (Address(slot) == keep) slot = (slot + 1) % Slots;
        _next = (slot + 1) % Slots;
        var copy = (float[])inv.Clone();
        _content[slot] = copy;
        fixed (float* h = copy) Cu.Check(Cu.cuMemcpyHtoDAsync(Address(slot), h, (nuint)(copy.Length * 4), stream));
        return Address(slot);
    }
}

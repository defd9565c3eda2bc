// The collective ops a tensor-parallel forward pass needs (Megatron-style: one all-reduce after the attention output
// and the MLP down projections, an all-gather of the vocabulary-split logits). A model that is one rank of a group holds
// a TensorShard; Llama.Forward calls these ops only then. Implementation: engine/Backends/Cpu/InProcessCommunicator.cs.
namespace LlamaRun.Core;

/// <summary>Collectives over the ranks of one tensor-parallel group; every rank calls each op in the same order.</summary>
public interface ICommunicator
{
    /// <summary>Ranks in the group.</summary>
    int Size { get; }

    /// <summary>x = the sum of x over all ranks (summed in rank order, so every rank gets the same bits).</summary>
    void AllReduce(int rank, IBackend backend, Tensor x);

    /// <summary>full [rows, Size * local.Cols] = the ranks' local [rows, cols] blocks side by side, in rank order.</summary>
    void AllGather(int rank, IBackend backend, Tensor local, Tensor full);

    /// <summary>Makes every rank's pending and later collective fail at once (a rank that failed calls it).</summary>
    void Abort(string reason);
}

/// <summary>A collective that could not complete: another rank failed, aborted or stopped calling.</summary>
public sealed class CollectiveAbortedException(string message) : Exception(message);

/// <summary>This model's place in a tensor-parallel group.</summary>
public sealed record TensorShard(int Rank, ICommunicator Communicator)
{
    public int Size => Communicator.Size;
}

// Where LlamaWeights reads a model's tensors from: a checkpoint's memory-mapped safetensors files (Checkpoint), or
// random weights generated for a shape alone (RandomWeights: benchmarks of models whose files are not at hand).
// Exercised by tests/WeightsTests.cs.
namespace LlamaRun.Model;

/// <summary>Named tensors in host memory, handed to the loader one range at a time.</summary>
public interface IWeightSource : IDisposable
{
    /// <summary>What the tensors come from, for messages (the index or single file, or a description).</summary>
    string Source { get; }

    /// <summary>Every tensor by name.</summary>
    IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    /// <summary>The file holding tensor name, for messages.</summary>
    string PathOf(string name);

    /// <summary>
    /// Host address of bytes [offset, offset + bytes) of tensor name, valid until Release(name) or Dispose; a range
    /// inside the tensor.
    /// </summary>
    nint Data(string name, long offset, long bytes);

    /// <summary>Tensor name converted to float32.</summary>
    float[] ReadF32(string name);

    /// <summary>The loader is done with the ranges of name it asked for, unless the backend kept aliasing them (kept).</summary>
    void Release(string name, bool kept);
}

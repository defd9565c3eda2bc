// The one exception type for files that cannot be used: a checkpoint, config, tokenizer or table.
// Messages are one line and name the file (and the tensor or key) with expected versus actual.
namespace LlamaRun.Model;

/// <summary>A model, config, tokenizer or table file is missing, malformed or unsupported.</summary>
public sealed class ModelFormatException(string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>Builds "FILE: problem", the path as the caller named it.</summary>
    public static ModelFormatException In(string path, string problem, Exception? inner = null) =>
        new($"{path}: {problem}", inner);
}

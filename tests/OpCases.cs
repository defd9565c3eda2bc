// xunit member data over the shared op case table (engine/Backends/OpCheckCases.cs), one theory row per case name,
// so `dotnet test --filter "FullyQualifiedName~BackendOpsTests.MatMul"` runs one family. Used by BackendOpsTests.
using LlamaRun.Backends;
using Xunit;

namespace LlamaRun.Tests;

public static class OpCases
{
    private static TheoryData<string> Of(OpKind op)
    {
        var data = new TheoryData<string>();
        foreach (var c in OpCheckCases.All.Where(c => c.Op == op)) data.Add(c.Name);
        return data;
    }

    public static OpCase Find(string name) => OpCheckCases.All.Single(c => c.Name == name);

    public static TheoryData<string> Embedding => Of(OpKind.Embedding);
    public static TheoryData<string> RmsNorm => Of(OpKind.RmsNorm);
    public static TheoryData<string> AddRmsNorm => Of(OpKind.AddRmsNorm);
    public static TheoryData<string> MatMul => Of(OpKind.MatMul);
    public static TheoryData<string> Rope => Of(OpKind.Rope);
    public static TheoryData<string> Attention => Of(OpKind.Attention);
    public static TheoryData<string> Rerotate => Of(OpKind.Rerotate);
    public static TheoryData<string> SwiGlu => Of(OpKind.SwiGlu);
    public static TheoryData<string> Add => Of(OpKind.Add);
    public static TheoryData<string> Argmax => Of(OpKind.Argmax);
}

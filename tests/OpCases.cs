// Looks a case of the shared op table (engine/Backends/OpCheckCases.cs) up by the name xunit shows as its theory row.
// Used by GpuOpsTests; filter one family with e.g. dotnet test --filter "DisplayName~matmul".
using LlamaRun.Backends;

namespace LlamaRun.Tests;

public static class OpCases
{
    public static OpCase Find(string name) => OpCheckCases.All.Single(c => c.Name == name);
}

// Locates repository files (models/austen, tests/fixtures) for the RoPE tests by walking up from the test binary.
// Tests that need them return early when they are absent.
namespace LlamaRun.Tests;

internal static class RopeTestPaths
{
    /// <summary>The absolute path of a repo-relative file or folder, or null when no ancestor holds it.</summary>
    public static string? RepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate) || Directory.Exists(candidate)) return candidate;
        }
        return null;
    }
}

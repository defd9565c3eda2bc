// Locates the shared test data directory (../shared next to the repository, or any ancestor's shared/)
// so data-driven tests can find it, and skip (return early) when it is absent.
// Usage: if (SharedData.Path("tokenizers/llama2/tokenizer.model") is not { } p) return;
namespace LlamaRun.Tests;

public static class SharedData
{
    private static readonly Lazy<string?> s_dir = new(() => FindUp("shared", d => Directory.Exists(d)));
    private static readonly Lazy<string?> s_repo = new(() =>
        FindUp("", d => File.Exists(System.IO.Path.Combine(d, "Runtime.sln")))?.TrimEnd('/', '\\'));

    /// The shared data directory, or null when it cannot be found.
    public static string? Dir => s_dir.Value;

    /// The repository root (the directory holding Runtime.sln), or null when it cannot be found.
    public static string? RepoRoot => s_repo.Value;

    /// Full path of rel inside the shared directory, or null when the directory or the entry is absent.
    public static string? Path(string rel)
    {
        if (Dir is null) return null;
        string p = System.IO.Path.Combine(Dir, rel);
        return File.Exists(p) || Directory.Exists(p) ? p : null;
    }

    /// Full path of rel inside the repository, or null when absent.
    public static string? RepoPath(string rel)
    {
        if (RepoRoot is null) return null;
        string p = System.IO.Path.Combine(RepoRoot, rel);
        return File.Exists(p) || Directory.Exists(p) ? p : null;
    }

    private static string? FindUp(string child, Func<string, bool> accept)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = System.IO.Path.Combine(d.FullName, child);
            if (accept(candidate)) return candidate;
        }
        return null;
    }
}

/// <summary>A fact that is reported as skipped when any of the named ../shared entries is absent.</summary>
public sealed class SharedFactAttribute : Xunit.FactAttribute
{
    public SharedFactAttribute(params string[] paths)
    {
        foreach (var p in paths)
            if (SharedData.Path(p) is null) { Skip = $"../shared/{p} is not available"; break; }
    }
}

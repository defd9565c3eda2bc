// Helpers for the loader tests: repository and shared-data paths, temporary directories, and the one-line error assertion.
// Used by SafeTensorsTests, ConfigTests, WeightsTests and LoaderFuzzTests.
using LlamaRun.Model;
using Xunit;

namespace LlamaRun.Tests;

internal static class LoaderTestSupport
{
    public static string RepoRoot => SharedData.RepoRoot ?? throw new InvalidOperationException("repository root (Runtime.sln) not found above " + AppContext.BaseDirectory);

    public static string HfTiny => Path.Combine(RepoRoot, "tests", "fixtures", "hf-tiny");

    public static string[] HfTinyVariants =>
        Directory.GetDirectories(HfTiny).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    /// Returns the path of a file or directory under ../shared, or null when absent (the caller returns early).
    public static string? SharedPath(string relative) => SharedData.Path(relative);

    // Asserts that action throws ModelFormatException whose message is one line, names path, and holds every fragment.
    public static ModelFormatException AssertModelError(Action action, string path, params string[] fragments)
    {
        var ex = Assert.Throws<ModelFormatException>(action);
        Assert.DoesNotContain('\n', ex.Message);
        Assert.DoesNotContain('\r', ex.Message);
        Assert.StartsWith(path + ":", ex.Message);
        foreach (var f in fragments) Assert.Contains(f, ex.Message);
        return ex;
    }
}

// A directory under the system temp folder, deleted on Dispose.
internal sealed class LoaderTempDir : IDisposable
{
    public LoaderTempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "llamarun-load-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Write(string name, byte[] bytes)
    {
        string p = File(name);
        System.IO.File.WriteAllBytes(p, bytes);
        return p;
    }

    public string Write(string name, string text)
    {
        string p = File(name);
        System.IO.File.WriteAllText(p, text);
        return p;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

// The default model built into llama-run (models/austen, a 6.8M-parameter Llama trained on Austen novels).
// It is unpacked once into the user's cache folder so it can be memory-mapped like any checkpoint.
using System.Reflection;
using System.Security.Cryptography;

namespace LlamaRun.Cli;

/// <summary>Locates (unpacking on first use) the model embedded in this program.</summary>
public static class EmbeddedModel
{
    private static readonly string[] Files = ["config.json", "model.safetensors", "tokenizer.model"];

    /// <summary>Directory holding the embedded model's files.</summary>
    public static string Directory()
    {
        var asm = typeof(EmbeddedModel).Assembly;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in Files)
        {
            using var s = Open(asm, f);
            sha.AppendData(BitConverter.GetBytes(s.Length));
        }
        string id = Convert.ToHexString(sha.GetHashAndReset())[..12].ToLowerInvariant();
        string root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        string dir = Path.Combine(root, "llama-run", "models", "austen-" + id);
        if (Files.All(f => File.Exists(Path.Combine(dir, f)))) return dir;

        // Unpack into a fresh folder, then rename it into place, so a half-written copy is never used.
        string tmp = dir + ".tmp-" + Environment.ProcessId;
        System.IO.Directory.CreateDirectory(tmp);
        foreach (var f in Files)
        {
            using var src = Open(asm, f);
            using var dst = File.Create(Path.Combine(tmp, f));
            src.CopyTo(dst);
        }
        try { System.IO.Directory.Move(tmp, dir); }
        catch (IOException) when (System.IO.Directory.Exists(dir)) { System.IO.Directory.Delete(tmp, true); }
        return dir;
    }

    private static Stream Open(Assembly asm, string file) =>
        asm.GetManifestResourceStream("austen/" + file)
            ?? throw new UsageException($"this build has no embedded model (published with EmbedDefaultModel=false): give -m DIR");
}

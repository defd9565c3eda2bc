// `llama-run tokenize (-m DIR | --tokenizer FILE) (-p TEXT | -f FILE) [--no-bos]`: prints the ids on one line.
using LlamaRun.Text;

namespace LlamaRun.Cli.Commands;

public static class Tokenize
{
    public const string Usage = "llama-run tokenize (-m DIR | --tokenizer FILE) (-p TEXT | -f FILE) [--no-bos]";

    public static int Run(Args args)
    {
        string? file = args.String("--tokenizer");
        string? prompt = args.String("-p", "--prompt"), textFile = args.String("-f", "--file");
        bool noBos = args.Has("--no-bos");
        if ((prompt is null) == (textFile is null)) throw new UsageException("tokenize needs exactly one of -p TEXT or -f FILE");
        if (file is not null && args.Has("-m")) throw new UsageException("give either -m or --tokenizer, not both");
        Tokenizer tokenizer;
        if (file is not null)
        {
            if (!File.Exists(file)) throw new UsageException($"{file}: no such file");
            tokenizer = Tokenizer.Load(file);
        }
        else tokenizer = Tokenizer.FromModelDirectory(ModelSession.ModelDirectory(args));
        args.RejectUnknown();
        if (textFile is not null)
            prompt = File.Exists(textFile) ? File.ReadAllText(textFile) : throw new UsageException($"{textFile}: no such file");
        Console.WriteLine(string.Join(' ', tokenizer.Encode(prompt!, addBos: !noBos)));
        return 0;
    }
}

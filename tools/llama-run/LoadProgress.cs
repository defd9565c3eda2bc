// Weight-loading progress on stderr, for loads that take a while (a 70B's 140 GB): after two seconds, one line
// rewritten in place on a terminal ("loading weights: 41% (5.60 of 13.48 GB)"), or a line at each quarter when stderr
// is redirected. Ranks of a tensor-parallel group report from their own threads; the line shows their sum.
using System.Diagnostics;
using System.Globalization;

namespace LlamaRun.Cli;

internal sealed class LoadProgress(int ranks = 1)
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly long[] _done = new long[ranks], _total = new long[ranks];
    private readonly object _lock = new();
    private double _lastShown;
    private int _quarter;
    private bool _inPlace;

    /// <summary>Rank's bytes uploaded so far, of its total.</summary>
    public void Report(int rank, long done, long total)
    {
        lock (_lock)
        {
            _done[rank] = done;
            _total[rank] = total;
            double seconds = _clock.Elapsed.TotalSeconds;
            if (seconds < 2) return;
            long d = _done.Sum(), t = Math.Max(1, _total.Sum());
            int percent = (int)Math.Min(100, 100 * d / t);
            string line = string.Create(CultureInfo.InvariantCulture, $"loading weights: {percent}% ({d / 1e9:F2} of {t / 1e9:F2} GB)");
            if (!Console.IsErrorRedirected)
            {
                if (seconds - _lastShown < 0.25 && percent < 100) return;
                _lastShown = seconds;
                Console.Error.Write("\r" + line);
                _inPlace = true;
            }
            else if (percent / 25 > _quarter)
            {
                _quarter = percent / 25;
                Console.Error.WriteLine(line);
            }
        }
    }

    /// <summary>Ends the line rewritten in place (if any).</summary>
    public void Finish()
    {
        lock (_lock)
        {
            if (_inPlace) Console.Error.WriteLine();
            _inPlace = false;
        }
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text.Json;
using Transport.Epoll;

namespace WebApp;

/// <summary>
/// The live counters behind <c>GET /stats</c>: a <see cref="MeterListener"/>, started before the server, that subscribes
/// to every instrument of the transport's meter (<see cref="EpollTransport.MeterName"/>) and keeps the latest figure of each, plus
/// what <c>/proc/self</c> says about the process (RSS, open fds, threads and the names of the <c>epoll-N</c> threads).
/// </summary>
/// <remarks>
/// Counters and up-down counters report increments, which are summed here from the moment the listener starts (it
/// starts before Kestrel, so before the first connection); observable instruments report their current value when
/// <see cref="MeterListener.RecordObservableInstruments"/> runs, which each <c>/stats</c> request does. The closed
/// counter is also kept per <c>reason</c> tag. The histogram of events per loop wake-up keeps count, sum and max.
/// On the Sockets transport the meter does not exist, so <c>meter</c> is empty and only the process figures show.
/// </remarks>
internal sealed class TransportStats : IDisposable
{
    private const string ClosedInstrument = "epoll.connections.closed";

    private readonly MeterListener _listener = new();
    private readonly Lock _observeLock = new();
    private readonly ConcurrentDictionary<string, Sum> _sums = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, long> _latest = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Sum> _closedByReason = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, HistogramCell> _histograms = new(StringComparer.Ordinal);
    private readonly DateTime _startedUtc = DateTime.UtcNow;

    public TransportStats()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == EpollTransport.MeterName)
            {
                if (!instrument.IsObservable && !IsHistogram(instrument))
                {
                    // Listed at 0 until the first increment, so every counter shows from the start.
                    _sums.GetOrAdd(instrument.Name, static _ => new Sum());
                }

                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => OnMeasurement(instrument, value, tags));
        _listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) => OnMeasurement(instrument, value, tags));
        _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => OnMeasurement(instrument, (long)value, tags));
        _listener.Start();
    }

    private void OnMeasurement(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        string name = instrument.Name;
        switch (instrument)
        {
            case Instrument when IsHistogram(instrument):
                _histograms.GetOrAdd(name, static _ => new HistogramCell()).Record(value);
                break;
            case ObservableCounter<long> or ObservableGauge<long> or ObservableUpDownCounter<long>
                or ObservableCounter<int> or ObservableGauge<int> or ObservableUpDownCounter<int>
                or ObservableCounter<double> or ObservableGauge<double> or ObservableUpDownCounter<double>:
                // An observable reports the current total: keep the latest.
                _latest[name] = value;
                break;
            default:
                // Counter and UpDownCounter report increments.
                _sums.GetOrAdd(name, static _ => new Sum()).Add(value);
                if (name == ClosedInstrument)
                {
                    string reason = "unknown";
                    foreach (KeyValuePair<string, object?> tag in tags)
                    {
                        if (tag.Key == "reason")
                        {
                            reason = tag.Value?.ToString() ?? "unknown";
                        }
                    }

                    _closedByReason.GetOrAdd(reason, static _ => new Sum()).Add(value);
                }

                break;
        }
    }

    private static bool IsHistogram(Instrument instrument) => instrument is Histogram<int> or Histogram<long> or Histogram<double>;

    /// <summary>Writes the counters and the process figures as JSON.</summary>
    public async Task WriteAsync(HttpContext context)
    {
        lock (_observeLock)
        {
            _listener.RecordObservableInstruments();
        }

        ProcessFigures process = ProcessFigures.Read();
        HttpResponse response = context.Response;
        response.ContentType = "application/json";
        response.Headers.CacheControl = "no-store";
        await using var json = new Utf8JsonWriter(response.BodyWriter, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("meter", EpollTransport.MeterName);
        json.WriteString("time", DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture));
        json.WriteNumber("uptimeSeconds", Math.Round((DateTime.UtcNow - _startedUtc).TotalSeconds, 3));

        json.WriteStartObject("process");
        json.WriteNumber("pid", Environment.ProcessId);
        json.WriteNumber("rssBytes", process.RssBytes);
        json.WriteNumber("fdCount", process.FdCount);
        json.WriteNumber("threadCount", process.ThreadCount);
        json.WriteStartArray("epollThreads");
        foreach (string name in process.EpollThreads)
        {
            json.WriteStringValue(name);
        }

        json.WriteEndArray();
        json.WriteNumber("gcHeapBytes", GC.GetTotalMemory(forceFullCollection: false));
        json.WriteNumber("gcCollections", GC.CollectionCount(0));
        json.WriteNumber("gcPauseMs", Math.Round(GC.GetTotalPauseDuration().TotalMilliseconds, 1));
        json.WriteNumber("gcAllocatedBytes", GC.GetTotalAllocatedBytes(precise: false));
        json.WriteNumber("threadPoolThreads", ThreadPool.ThreadCount);
        json.WriteEndObject();

        json.WriteStartObject("counters");
        foreach (KeyValuePair<string, long> counter in Counters().OrderBy(static c => c.Key, StringComparer.Ordinal))
        {
            json.WriteNumber(counter.Key, counter.Value);
        }

        json.WriteEndObject();

        json.WriteStartObject("closedByReason");
        foreach (KeyValuePair<string, Sum> reason in _closedByReason.OrderBy(static c => c.Key, StringComparer.Ordinal))
        {
            json.WriteNumber(reason.Key, reason.Value.Value);
        }

        json.WriteEndObject();

        json.WriteStartObject("histograms");
        foreach (KeyValuePair<string, HistogramCell> histogram in _histograms.OrderBy(static c => c.Key, StringComparer.Ordinal))
        {
            (long count, long sum, long max) = histogram.Value.Read();
            json.WriteStartObject(histogram.Key);
            json.WriteNumber("count", count);
            json.WriteNumber("sum", sum);
            json.WriteNumber("max", max);
            json.WriteNumber("mean", count == 0 ? 0 : Math.Round((double)sum / count, 3));
            json.WriteEndObject();
        }

        json.WriteEndObject();
        json.WriteEndObject();
        await json.FlushAsync(context.RequestAborted);
    }

    private IEnumerable<KeyValuePair<string, long>> Counters()
    {
        foreach (KeyValuePair<string, Sum> sum in _sums)
        {
            yield return new(sum.Key, sum.Value.Value);
        }

        foreach (KeyValuePair<string, long> latest in _latest)
        {
            yield return latest;
        }
    }

    public void Dispose() => _listener.Dispose();

    private sealed class Sum
    {
        private long _value;

        public long Value => Volatile.Read(ref _value);

        public void Add(long value) => Interlocked.Add(ref _value, value);
    }

    private sealed class HistogramCell
    {
        private readonly Lock _lock = new();
        private long _count;
        private long _sum;
        private long _max;

        public void Record(long value)
        {
            lock (_lock)
            {
                _count++;
                _sum += value;
                _max = Math.Max(_max, value);
            }
        }

        public (long Count, long Sum, long Max) Read()
        {
            lock (_lock)
            {
                return (_count, _sum, _max);
            }
        }
    }

    /// <summary>What /proc/self says: RSS and threads from <c>status</c>, open fds from <c>fd/</c>, thread names from <c>task/*/comm</c>.</summary>
    private readonly record struct ProcessFigures(long RssBytes, int FdCount, int ThreadCount, IReadOnlyList<string> EpollThreads)
    {
        public static ProcessFigures Read()
        {
            long rss = 0;
            int threads = 0;
            try
            {
                foreach (string line in File.ReadLines("/proc/self/status"))
                {
                    if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    {
                        rss = ParseKiloBytes(line) * 1024;
                    }
                    else if (line.StartsWith("Threads:", StringComparison.Ordinal))
                    {
                        threads = int.Parse(line.AsSpan("Threads:".Length).Trim(), CultureInfo.InvariantCulture);
                    }
                }
            }
            catch (IOException)
            {
                // Not Linux, or /proc is not mounted: the figures stay 0.
            }

            int fds = 0;
            var epollThreads = new List<string>();
            try
            {
                // The enumeration itself holds one fd on /proc/self/fd while it runs: not counted.
                fds = Math.Max(0, Directory.EnumerateFileSystemEntries("/proc/self/fd").Count() - 1);
                foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
                {
                    try
                    {
                        string name = File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n');
                        if (name.StartsWith("epoll-", StringComparison.Ordinal))
                        {
                            epollThreads.Add(name);
                        }
                    }
                    catch (IOException)
                    {
                        // The thread ended while we looked.
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }

            epollThreads.Sort(StringComparer.Ordinal);
            if (threads == 0)
            {
                threads = Process.GetCurrentProcess().Threads.Count;
            }

            return new ProcessFigures(rss, fds, threads, epollThreads);
        }

        private static long ParseKiloBytes(string line)
        {
            // "VmRSS:	   12345 kB"
            ReadOnlySpan<char> value = line.AsSpan(line.IndexOf(':', StringComparison.Ordinal) + 1).Trim();
            int space = value.IndexOf(' ');
            return long.Parse(space < 0 ? value : value[..space], CultureInfo.InvariantCulture);
        }
    }
}

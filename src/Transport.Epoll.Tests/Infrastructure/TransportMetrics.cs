using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Reads the epoll transport's instruments of one host (its meter is created by that host's IMeterFactory).</summary>
public static class TransportMetrics
{
    /// <summary>
    /// Sums what the instrument <paramref name="name"/> of <paramref name="server"/>'s meter reports: the current value
    /// of observable instruments, the measurements of ordinary counters made while <paramref name="during"/> runs.
    /// </summary>
    public static async Task<Dictionary<string, long>> CollectAsync(TestServer server, Func<Task>? during = null)
    {
        var factory = server.App.Services.GetRequiredService<IMeterFactory>();
        var totals = new Dictionary<string, long>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == EpollTransport.MeterName && ReferenceEquals(instrument.Meter.Scope, factory))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Add(instrument, value, tags));
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) => Add(instrument, value, tags));
        listener.Start();
        if (during is not null)
        {
            await during();
        }

        lock (totals)
        {
            // Observable instruments report their totals now; keep only that value for them.
            foreach (string key in totals.Keys.ToList())
            {
                if (key.StartsWith("observed:", StringComparison.Ordinal))
                {
                    totals.Remove(key);
                }
            }
        }

        listener.RecordObservableInstruments();
        lock (totals)
        {
            return totals.ToDictionary(kv => kv.Key.Replace("observed:", "", StringComparison.Ordinal), kv => kv.Value);
        }

        void Add(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string key = (instrument.IsObservable ? "observed:" : "") + instrument.Name;
            var tagged = new List<string>();
            foreach (var tag in tags)
            {
                tagged.Add($"{key}[{tag.Key}={tag.Value}]");
            }

            lock (totals)
            {
                totals[key] = totals.GetValueOrDefault(key) + value;
                foreach (string t in tagged)
                {
                    totals[t] = totals.GetValueOrDefault(t) + value;
                }
            }
        }
    }
}

using System.Diagnostics.Metrics;

namespace Transport.Epoll.Internal;

/// <summary>
/// The transport's counters, on a <see cref="Meter"/> named <see cref="MeterName"/> (watch it with
/// <c>dotnet-counters monitor --counters Transport.Epoll</c>). Counters are process-wide totals: a
/// <see cref="Counter{T}.Add(T)"/> on an instrument nobody listens to costs a branch.
/// </summary>
internal sealed class EpollMetrics : IDisposable
{
    public const string MeterName = "Transport.Epoll";

    private readonly Meter _meter;
    private readonly Counter<long> _accepted;
    private readonly Counter<long> _closed;
    private readonly UpDownCounter<long> _active;
    private readonly Counter<long> _bytesReceived;
    private readonly Counter<long> _bytesSent;
    private readonly Counter<long> _partialWrites;
    private readonly Counter<long> _acceptBackOffs;
    private readonly Counter<long> _staleEvents;
    private readonly Histogram<int> _eventsPerWakeUp;

    public EpollMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _accepted = _meter.CreateCounter<long>("epoll.connections.accepted", "{connection}", "Connections accepted.");
        _closed = _meter.CreateCounter<long>("epoll.connections.closed", "{connection}", "Connections closed, by close reason.");
        _active = _meter.CreateUpDownCounter<long>("epoll.connections.active", "{connection}", "Connections open now.");
        _bytesReceived = _meter.CreateCounter<long>("epoll.bytes.received", "By", "Bytes read from sockets.");
        _bytesSent = _meter.CreateCounter<long>("epoll.bytes.sent", "By", "Bytes written to sockets.");
        _partialWrites = _meter.CreateCounter<long>("epoll.writes.partial", "{write}", "Writes the kernel took only part of (the rest waits for EPOLLOUT).");
        _acceptBackOffs = _meter.CreateCounter<long>("epoll.accept.backoffs", "{backoff}", "Times accepting paused because the process ran out of file descriptors or memory.");
        _staleEvents = _meter.CreateCounter<long>("epoll.events.stale", "{event}", "Events dropped because their connection id was no longer live.");
        _eventsPerWakeUp = _meter.CreateHistogram<int>("epoll.loop.events_per_wakeup", "{event}", "Events returned by one epoll_wait.");
    }

    public void ConnectionAccepted()
    {
        _accepted.Add(1);
        _active.Add(1);
    }

    public void ConnectionClosed(EpollCloseReason reason)
    {
        _active.Add(-1);
        if (_closed.Enabled)
        {
            _closed.Add(1, new KeyValuePair<string, object?>("reason", reason.ToString()));
        }
    }

    public void BytesReceived(long count) => _bytesReceived.Add(count);

    public void BytesSent(long count) => _bytesSent.Add(count);

    public void PartialWrite() => _partialWrites.Add(1);

    public void AcceptBackOff() => _acceptBackOffs.Add(1);

    public void StaleEventDropped() => _staleEvents.Add(1);

    public void LoopWokeUp(int events)
    {
        if (_eventsPerWakeUp.Enabled)
        {
            _eventsPerWakeUp.Record(events);
        }
    }

    public void Dispose() => _meter.Dispose();
}

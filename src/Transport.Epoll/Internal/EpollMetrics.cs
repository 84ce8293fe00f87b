using System.Diagnostics.Metrics;

namespace Transport.Epoll.Internal;

/// <summary>
/// The transport's instruments, on a <see cref="Meter"/> named <see cref="EpollTransport.MeterName"/>; watch them with
/// <c>dotnet-counters monitor --counters Transport.Epoll -p PID</c>. Per-byte and per-syscall figures are kept by each
/// loop in <see cref="LoopCounters"/> and summed only when observed; per-connection events use ordinary counters.
/// </summary>
internal sealed class EpollMetrics : IDisposable
{
    private readonly Meter _meter;
    private readonly Lock _lock = new();
    private readonly List<LoopCounters> _live = [];
    private readonly LoopCounters _retired = new();
    private static readonly KeyValuePair<string, object?> s_inbound = new("direction", "inbound");
    private static readonly KeyValuePair<string, object?> s_outbound = new("direction", "outbound");

    private readonly Counter<long> _accepted;
    private readonly Counter<long> _connected;
    private readonly Counter<long> _connectFailures;
    private readonly Counter<long> _closed;
    private readonly UpDownCounter<long> _active;
    private readonly Counter<long> _acceptBackOffs;
    private readonly Counter<long> _staleEvents;
    private readonly Counter<long> _proxyUntrusted;
    private readonly Histogram<int> _eventsPerWakeUp;
    private readonly Counter<long> _sendFileFallbackBytes;
    private readonly Counter<long> _byIdRefused;
    private readonly Counter<long> _byIdBroadcasts;
    private long _activeCount;
    private long _loopStalls;

    public EpollMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(EpollTransport.MeterName) ?? new Meter(EpollTransport.MeterName);
        _accepted = _meter.CreateCounter<long>("epoll.connections.accepted", "{connection}", "Connections accepted.");
        _connected = _meter.CreateCounter<long>("epoll.connections.connected", "{connection}", "Outbound connections established (EpollConnectionFactory).");
        _connectFailures = _meter.CreateCounter<long>("epoll.connect.failures", "{connect}", "Outbound connects that failed, tagged with the error (a SocketError name, ConnectTimeout, Canceled or Shutdown).");
        _closed = _meter.CreateCounter<long>("epoll.connections.closed", "{connection}", "Connections closed, tagged with the close reason and the direction (inbound, outbound).");
        _active = _meter.CreateUpDownCounter<long>("epoll.connections.active", "{connection}", "Connections open now, tagged with the direction (inbound, outbound).");
        _acceptBackOffs = _meter.CreateCounter<long>("epoll.accept.backoffs", "{backoff}", "Times accepting paused because the process ran out of file descriptors or memory.");
        _proxyUntrusted = _meter.CreateCounter<long>("epoll.proxy_protocol.untrusted", "{connection}", "Connections refused at accept on an endpoint that requires the PROXY protocol, because they did not come from a trusted proxy.");
        _staleEvents = _meter.CreateCounter<long>("epoll.events.stale", "{event}", "Events dropped because their connection id was no longer live.");
        _eventsPerWakeUp = _meter.CreateHistogram<int>("epoll.loop.events_per_wakeup", "{event}", "Events returned by one epoll_wait that returned any.");

        _meter.CreateObservableCounter("epoll.byid.messages", () => Sum().ByIdMessages, "{message}", "Messages written by id (IEpollConnections) that the kernel took, one per connection for a broadcast.");
        _byIdRefused = _meter.CreateCounter<long>("epoll.byid.refused", "{message}", "Writes by id refused because the connection's by-id queue was at MaxWriteBufferSize (result Full).");
        _byIdBroadcasts = _meter.CreateCounter<long>("epoll.byid.broadcasts", "{broadcast}", "Broadcasts made through IEpollConnections.");
        _sendFileFallbackBytes = _meter.CreateCounter<long>("epoll.sendfile.fallback_bytes", "By", "File bytes SendFileAsync copied through the pipe because sendfile(2) could not be used.");
        _meter.CreateObservableCounter("epoll.sendfile.bytes", () => Sum().SendFileBytes, "By", "File bytes sent with sendfile(2).");
        _meter.CreateObservableCounter("epoll.sendfile.calls", () => Sum().SendFileCalls, "{call}", "sendfile(2) calls.");
        _meter.CreateObservableCounter("epoll.sendfile.offloads", () => Sum().SendFileOffloads, "{slice}", "File slices not in the page cache, sent from a thread-pool thread so the loop does not wait for the disk.");
        _meter.CreateObservableCounter("epoll.zerocopy.sends", () => Sum().ZeroCopySends, "{call}", "sendmsg(2) calls with MSG_ZEROCOPY.");
        _meter.CreateObservableCounter("epoll.zerocopy.completions", () => Sum().ZeroCopyCompletions, "{notification}", "Zero-copy completion notifications read from sockets' error queues.");
        _meter.CreateObservableCounter("epoll.zerocopy.copied", () => Sum().ZeroCopyCopied, "{notification}", "Zero-copy completions that said the kernel copied the data anyway (each turns zero-copy off for its connection).");
        _meter.CreateObservableGauge("epoll.connections.table", () => (long)ConnectionTable.Shared.Count, "{entry}", "Entries in the process-wide connection table (connections and listening sockets).");
        _meter.CreateObservableCounter("epoll.bytes.received", () => Sum().BytesReceived, "By", "Bytes read from sockets.");
        _meter.CreateObservableCounter("epoll.bytes.sent", () => Sum().BytesSent, "By", "Bytes written to sockets.");
        _meter.CreateObservableCounter("epoll.syscalls.read", () => Sum().Reads, "{call}", "read(2) calls on connections.");
        _meter.CreateObservableCounter("epoll.syscalls.write", () => Sum().Writes, "{call}", "sendmsg(2) calls on connections.");
        _meter.CreateObservableCounter("epoll.syscalls.epoll_wait", () => Sum().EpollWaits, "{call}", "epoll_wait(2) calls.");
        _meter.CreateObservableCounter("epoll.events", () => Sum().Events, "{event}", "Events returned by epoll_wait.");
        _meter.CreateObservableCounter("epoll.eagain", () => Sum().WouldBlock, "{call}", "Reads and writes that returned EAGAIN.");
        _meter.CreateObservableCounter("epoll.writes.flushing_thread", () => Sum().FlusherWrites, "{call}", "sendmsg(2) calls made on the thread that flushed instead of the loop (SendOnFlushingThread).");
        _meter.CreateObservableCounter("epoll.loop.stalls", () => Volatile.Read(ref _loopStalls), "{turn}", "Loop turns that ran longer than LoopStallThreshold.");
        _meter.CreateObservableCounter("epoll.loop.spins.found", () => Sum().SpinsFound, "{spin}", "Spins before epoll_wait (SpinBeforeWait) that found an event or scheduled work.");
        _meter.CreateObservableCounter("epoll.loop.spins.expired", () => Sum().SpinsExpired, "{spin}", "Spins before epoll_wait that ran out and blocked (each turns spinning off until a wait is short again).");
        _meter.CreateObservableCounter("epoll.writes.partial", () => Sum().PartialWrites, "{call}", "Writes the kernel took only part of (the rest waits for EPOLLOUT).");
    }

    /// <summary>Connections open now, across every loop of this factory.</summary>
    public long ActiveConnections => Volatile.Read(ref _activeCount);

    /// <summary>Totals over every loop, live and stopped.</summary>
    public LoopCounters Sum()
    {
        var total = new LoopCounters();
        lock (_lock)
        {
            _retired.AddTo(total);
            foreach (LoopCounters counters in _live)
            {
                counters.AddTo(total);
            }
        }

        return total;
    }

    public LoopCounters AddLoop()
    {
        var counters = new LoopCounters();
        lock (_lock)
        {
            _live.Add(counters);
        }

        return counters;
    }

    public void RemoveLoop(LoopCounters counters)
    {
        lock (_lock)
        {
            if (_live.Remove(counters))
            {
                counters.AddTo(_retired);
            }
        }
    }

    /// <summary>A connection was set up on a loop: accepted (inbound) or connected by the factory (outbound).</summary>
    public void ConnectionOpened(EpollConnectionDirection direction)
    {
        Interlocked.Increment(ref _activeCount);
        if (direction == EpollConnectionDirection.Outbound)
        {
            _connected.Add(1);
        }
        else
        {
            _accepted.Add(1);
        }

        _active.Add(1, Tag(direction));
    }

    public void ConnectionClosed(EpollCloseReason reason, EpollConnectionDirection direction)
    {
        Interlocked.Decrement(ref _activeCount);
        _active.Add(-1, Tag(direction));
        if (_closed.Enabled)
        {
            _closed.Add(1, new KeyValuePair<string, object?>("reason", reason.ToString()), Tag(direction));
        }
    }

    /// <summary>An outbound connect failed; <paramref name="error"/> is the tag (see the instrument's description).</summary>
    public void ConnectFailed(string error)
    {
        if (_connectFailures.Enabled)
        {
            _connectFailures.Add(1, new KeyValuePair<string, object?>("error", error));
        }
    }

    public void ByIdFull() => _byIdRefused.Add(1);

    public void ByIdBroadcast() => _byIdBroadcasts.Add(1);

    public void SendFileFallbackBytes(long bytes) => _sendFileFallbackBytes.Add(bytes);

    public void AcceptBackOff() => _acceptBackOffs.Add(1);

    public void ProxyProtocolUntrusted() => _proxyUntrusted.Add(1);

    public void StaleEventDropped() => _staleEvents.Add(1);

    public void LoopStalled() => Interlocked.Increment(ref _loopStalls);

    public void LoopWokeUp(int events)
    {
        if (events > 0 && _eventsPerWakeUp.Enabled)
        {
            _eventsPerWakeUp.Record(events);
        }
    }

    public void Dispose() => _meter.Dispose();

    private static KeyValuePair<string, object?> Tag(EpollConnectionDirection direction)
        => direction == EpollConnectionDirection.Outbound ? s_outbound : s_inbound;
}

namespace Transport.Epoll.Internal;

/// <summary>
/// The event loops of one transport, shared by everything that uses them: each bound endpoint and an outbound
/// connection factory hold a lease. The loops start with the first lease and stop when the last one is released, so
/// stopping the host (or disposing a standalone connection factory) stops every <c>epoll-N</c> thread and closes
/// every fd, while an endpoint and the factory in one host run their connections on the same threads.
/// </summary>
internal sealed class SharedLoopGroup : IAsyncDisposable
{
    private readonly ConnectionTable _table;
    private readonly Lock _lock = new();
    private EpollThreadGroup? _group;
    private int _leases;

    public SharedLoopGroup(TransportContext context, ConnectionTable table)
    {
        Context = context;
        _table = table;
    }

    public TransportContext Context { get; }

    /// <summary>The loops while any lease is held (tests look at them).</summary>
    public EpollThreadGroup? Group => _group;

    /// <summary>Takes a lease: the running loops, or new ones started now.</summary>
    public EpollThreadGroup Acquire()
    {
        lock (_lock)
        {
            if (_group is null)
            {
                _group = new EpollThreadGroup(Context.Options.ThreadCount, _table, Context);
                EpollLog.LoopsStarted(Context.Logger, Context.Options.ThreadCount);
            }

            _leases++;
            return _group;
        }
    }

    /// <summary>Gives a lease back; the last one stops the loops (their open connections are aborted).</summary>
    public async Task Release()
    {
        EpollThreadGroup? stopping = null;
        lock (_lock)
        {
            if (_leases > 0 && --_leases == 0)
            {
                stopping = _group;
                _group = null;
            }
        }

        if (stopping is not null)
        {
            await stopping.StopAsync().ConfigureAwait(false);
            EpollLog.LoopsStopped(Context.Logger, stopping.Loops.Length);
        }
    }

    /// <summary>Stops the loops whatever leases are still held (the owner is disposed); later releases do nothing.</summary>
    public async Task StopAsync()
    {
        EpollThreadGroup? group;
        lock (_lock)
        {
            group = _group;
            _group = null;
            _leases = 0;
        }

        if (group is not null)
        {
            await group.StopAsync().ConfigureAwait(false);
        }
    }

    public ValueTask DisposeAsync() => new(StopAsync());
}

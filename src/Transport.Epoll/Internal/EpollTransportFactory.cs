using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Transport.Epoll.Internal;

/// <summary>
/// Kestrel's entry point into the transport. The event loops start with the first bound endpoint and stop when the
/// last one is disposed, so stopping the host stops every <c>epoll-N</c> thread and closes every fd.
/// </summary>
internal sealed class EpollTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector, IAsyncDisposable
{
    private readonly TransportContext _context;
    private readonly ConnectionTable _table;
    private readonly Lock _lock = new();
    private EpollThreadGroup? _group;
    private int _listeners;

    public EpollTransportFactory(
        IOptions<EpollTransportOptions> options,
        ILoggerFactory loggerFactory,
        IMemoryPoolFactory<byte>? memoryPoolFactory = null,
        IMeterFactory? meterFactory = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(loggerFactory);

        // Reading Value runs the validator: a bad option fails start-up here, naming the option.
        EpollTransportOptions value = options.Value;
        _context = new TransportContext(value, new NonThrowingLogger(loggerFactory.CreateLogger(EpollLog.Category)), new EpollMetrics(meterFactory), memoryPoolFactory);
        _table = ConnectionTable.Shared;
    }

    /// <summary>The loops while any endpoint is bound (tests look at them).</summary>
    internal EpollThreadGroup? Group => _group;

    public bool CanBind(EndPoint endpoint) => endpoint switch
    {
        IPEndPoint => true,
        UnixDomainSocketEndPoint => true,
        FileHandleEndPoint handle => handle.FileHandleType is FileHandleType.Auto or FileHandleType.Tcp,
        _ => false,
    };

    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (!CanBind(endpoint))
        {
            throw new NotSupportedException($"The epoll transport cannot bind {endpoint.GetType().Name} endpoints.");
        }

        EpollThreadGroup group = AcquireLoops();
        try
        {
            // UseProxyProtocol on the endpoint's ListenOptions, else the configuration's ports.
            ProxyProtocolEndpoint? proxy = ProxyProtocolBinding.Take()
                ?? (endpoint is IPEndPoint ip && _context.ConfiguredProxyProtocol is { } configured && _context.Options.ProxyProtocol.Ports.Contains(ip.Port) ? configured : null);
            IConnectionListener listener = EpollConnectionListener.Bind(endpoint, group, _context, ReleaseLoops, proxy);
            return ValueTask.FromResult(listener);
        }
        catch
        {
            _ = ReleaseLoops();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        EpollThreadGroup? group;
        lock (_lock)
        {
            group = _group;
            _group = null;
            _listeners = 0;
        }

        if (group is not null)
        {
            await group.StopAsync().ConfigureAwait(false);
        }

        _context.Metrics.Dispose();
    }

    private EpollThreadGroup AcquireLoops()
    {
        lock (_lock)
        {
            if (_group is null)
            {
                _group = new EpollThreadGroup(_context.Options.ThreadCount, _table, _context);
                EpollLog.LoopsStarted(_context.Logger, _context.Options.ThreadCount);
            }

            _listeners++;
            return _group;
        }
    }

    private async Task ReleaseLoops()
    {
        EpollThreadGroup? stopping = null;
        lock (_lock)
        {
            if (_listeners > 0 && --_listeners == 0)
            {
                stopping = _group;
                _group = null;
            }
        }

        if (stopping is not null)
        {
            // Connections still open (Kestrel has already given up on them) are aborted by their loops.
            await stopping.StopAsync().ConfigureAwait(false);
            EpollLog.LoopsStopped(_context.Logger, stopping.Loops.Length);
        }
    }
}

using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Transport.Epoll.Internal;

/// <summary>
/// Kestrel's entry point into the transport. The event loops (<see cref="SharedLoopGroup"/>) start with the first bound
/// endpoint, or the host's first outbound connect, and stop when the last endpoint is disposed and the host's connection
/// factory is disposed, so stopping the host stops every <c>epoll-N</c> thread and closes every fd.
/// </summary>
internal sealed class EpollTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector, IAsyncDisposable
{
    private readonly TransportContext _context;

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
        Loops = new SharedLoopGroup(_context, ConnectionTable.Shared);
    }

    /// <summary>The loops while any endpoint is bound or the host's connection factory holds them (tests look at them).</summary>
    internal EpollThreadGroup? Group => Loops.Group;

    /// <summary>The loops, shared with the host's <see cref="EpollConnectionFactory"/>: outbound connections run on
    /// the same threads as accepted ones.</summary>
    internal SharedLoopGroup Loops { get; }

    /// <summary>What the loops share; <see cref="EpollConnections"/> finds this transport's connections by it.</summary>
    internal TransportContext Context => _context;

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

        EpollThreadGroup group = Loops.Acquire();
        try
        {
            // UseProxyProtocol on the endpoint's ListenOptions, else the configuration's ports.
            ProxyProtocolEndpoint? proxy = ProxyProtocolBinding.Take()
                ?? (endpoint is IPEndPoint ip && _context.ConfiguredProxyProtocol is { } configured && _context.Options.ProxyProtocol.Ports.Contains(ip.Port) ? configured : null);
            IConnectionListener listener = EpollConnectionListener.Bind(endpoint, group, _context, Loops.Release, proxy);
            return ValueTask.FromResult(listener);
        }
        catch
        {
            _ = Loops.Release();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Connections still open (Kestrel has already given up on them) are aborted by their loops.
        await Loops.StopAsync().ConfigureAwait(false);
        _context.Metrics.Dispose();
    }
}

using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Transport.Epoll.Hosting;
using Transport.Epoll.Internal;

namespace Transport.Epoll;

/// <summary>
/// Opens outbound connections on the epoll transport's event loops: a non-blocking <c>connect(2)</c> that waits in a
/// loop's epoll set, then a connection with everything an accepted one has (a never-reused id, half-close, close
/// reasons, sendfile, the idle timeout, <see cref="IEpollConnectionFeature"/> with
/// <see cref="EpollConnectionDirection.Outbound"/>, metrics tagged <c>direction=outbound</c>).
/// </summary>
/// <remarks>
/// <para>
/// In a host with the transport (<c>UseEpollTransport</c> or <c>AddEpollTransport</c>), take
/// <see cref="IConnectionFactory"/> (or this type) from dependency injection: it shares the loops of the transport,
/// so outbound and accepted connections run on the same <c>epoll-N</c> threads and options. Without Kestrel, register it
/// with <c>services.AddEpollConnectionFactory(o =&gt; ...)</c>, or construct it with
/// <see cref="EpollConnectionFactory(EpollTransportOptions, ILoggerFactory?)"/>: it then owns its loops, which start
/// with the first connect and stop when it is disposed (open connections are aborted then, with close reason
/// <see cref="EpollCloseReason.TransportShutdown"/>).
/// </para>
/// <para>
/// Failures: an error the kernel reports (refused, unreachable, its own SYN timeout...) is a
/// <see cref="SocketException"/> with the <see cref="SocketError"/> .NET's sockets give for it
/// (<see cref="SocketError.ConnectionRefused"/>, <see cref="SocketError.NetworkUnreachable"/>,
/// <see cref="SocketError.HostUnreachable"/>, <see cref="SocketError.TimedOut"/>...); no answer within
/// <see cref="EpollTransportOptions.ConnectTimeout"/> is a <see cref="TimeoutException"/>; the caller's token is an
/// <see cref="OperationCanceledException"/> carrying that token; the loops stopping mid-connect (the host or the factory
/// disposed) is a <see cref="ConnectionAbortedException"/>.
/// </para>
/// </remarks>
[SupportedOSPlatform("linux")]
public sealed class EpollConnectionFactory : IConnectionFactory, IAsyncDisposable, IDisposable
{
    private readonly SharedLoopGroup _loops;
    private readonly bool _ownsLoops;
    private readonly TimeSpan _timeout;
    private readonly Lock _lock = new();
    private EpollThreadGroup? _group;
    private bool _disposed;
    private uint _nextLoop;

    /// <summary>
    /// A factory with its own event loops, for an application without Kestrel (or one that wants its outbound
    /// connections on other threads than its server's). The options are checked here and read once; of them, the
    /// ones about listening (<c>Backlog</c>, <c>AcceptDistribution</c>, <c>MaxPendingAccepts</c>) do not apply.
    /// </summary>
    /// <param name="options">The loops' and connections' options, <see cref="EpollTransportOptions.ConnectTimeout"/> included.</param>
    /// <param name="loggerFactory">Where the transport logs (category <c>Transport.Epoll</c>); none when null.</param>
    /// <exception cref="OptionsValidationException">An option is out of range; the message names it and its range.</exception>
    /// <exception cref="PlatformNotSupportedException">The system has no epoll; the message says why.</exception>
    public EpollConnectionFactory(EpollTransportOptions options, ILoggerFactory? loggerFactory = null)
        : this(options, loggerFactory, meterFactory: null)
    {
    }

    /// <summary>A factory with its own loops, whose meter comes from the host's <see cref="IMeterFactory"/>.</summary>
    internal EpollConnectionFactory(EpollTransportOptions options, ILoggerFactory? loggerFactory, IMeterFactory? meterFactory)
    {
        ArgumentNullException.ThrowIfNull(options);
        EpollTransport.ThrowIfUnsupported();
        ValidateOptionsResult result = new EpollTransportOptionsValidator().Validate(Options.DefaultName, options);
        if (result.Failed)
        {
            throw new OptionsValidationException(Options.DefaultName, typeof(EpollTransportOptions), result.Failures);
        }

        ILogger logger = new NonThrowingLogger((loggerFactory ?? NullLoggerFactory.Instance).CreateLogger(EpollLog.Category));
        var context = new Internal.TransportContext(options, logger, new EpollMetrics(meterFactory), memoryPoolFactory: null);
        _loops = new SharedLoopGroup(context, ConnectionTable.Shared);
        _ownsLoops = true;
        _timeout = options.ConnectTimeout;
    }

    /// <summary>The host's factory: connects on the loops of the host's transport (which validated the options).</summary>
    internal EpollConnectionFactory(SharedLoopGroup loops)
    {
        _loops = loops;
        _ownsLoops = false;
        _timeout = loops.Context.Options.ConnectTimeout;
    }

    /// <summary>The loops this factory connects through, while it holds them (tests look at them).</summary>
    internal EpollThreadGroup? Group => _group;

    /// <summary>
    /// Connects to <paramref name="endpoint"/>: an <see cref="IPEndPoint"/> (IPv4 or IPv6), a
    /// <see cref="UnixDomainSocketEndPoint"/>, or a <see cref="DnsEndPoint"/> (resolved, then its addresses tried in
    /// order, each with the whole <see cref="EpollTransportOptions.ConnectTimeout"/>, until one connects). The
    /// connection's loops are taken in turn. Dispose the connection when done with it, as one from a listener.
    /// </summary>
    /// <exception cref="SocketException">The kernel refused the connect (see the class remarks).</exception>
    /// <exception cref="TimeoutException">No answer within <see cref="EpollTransportOptions.ConnectTimeout"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The factory is disposed.</exception>
    /// <exception cref="NotSupportedException">Another kind of endpoint.</exception>
    public ValueTask<ConnectionContext> ConnectAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (endpoint is not (IPEndPoint or UnixDomainSocketEndPoint or DnsEndPoint))
        {
            throw new NotSupportedException($"The epoll transport cannot connect to {endpoint.GetType().Name} endpoints.");
        }

        EpollThreadGroup group = Lease();
        if (endpoint is DnsEndPoint dns)
        {
            return ConnectToHostAsync(group, dns, cancellationToken);
        }

        return new ValueTask<ConnectionContext>(OutboundConnect.StartAsync(NextLoop(group), endpoint, _timeout, cancellationToken));
    }

    /// <summary>
    /// Lets the loops go: a factory with its own loops stops them (open connections are aborted, every fd is closed);
    /// the host's factory returns its hold on the transport's loops, which stop with the host.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        bool held;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            held = _group is not null;
            _group = null;
        }

        if (_ownsLoops)
        {
            await _loops.StopAsync().ConfigureAwait(false);
            _loops.Context.Metrics.Dispose();
        }
        else if (held)
        {
            await _loops.Release().ConfigureAwait(false);
        }
    }

    /// <summary>As <see cref="DisposeAsync"/>, waiting for it: a service provider disposed synchronously (a console
    /// app's <c>using var provider</c>) disposes its singletons this way.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    private async ValueTask<ConnectionContext> ConnectToHostAsync(EpollThreadGroup group, DnsEndPoint endpoint, CancellationToken cancellationToken)
    {
        IPAddress[] addresses = await Dns.GetHostAddressesAsync(endpoint.Host, endpoint.AddressFamily, cancellationToken).ConfigureAwait(false);
        Exception? last = null;
        foreach (IPAddress address in addresses)
        {
            try
            {
                return await OutboundConnect.StartAsync(NextLoop(group), new IPEndPoint(address, endpoint.Port), _timeout, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or TimeoutException)
            {
                // The next address may answer (an IPv6 address first, on a host whose server listens on IPv4 only).
                last = e;
            }
        }

        throw last ?? new SocketException((int)SocketError.HostNotFound, $"{endpoint.Host} resolved to no address.");
    }

    /// <summary>The loops, started by the first connect; held until the factory is disposed.</summary>
    private EpollThreadGroup Lease()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _group ??= _loops.Acquire();
        }
    }

    private EpollLoop NextLoop(EpollThreadGroup group)
    {
        EpollLoop[] loops = group.Loops;
        return loops[(int)(Interlocked.Increment(ref _nextLoop) % (uint)loops.Length)];
    }
}

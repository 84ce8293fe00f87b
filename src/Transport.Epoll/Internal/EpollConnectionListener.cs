using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// One bound endpoint. Its sockets are registered in every loop (<see cref="AcceptRegistration"/>); connections the
/// loops accept wait in a queue of at most <c>MaxPendingAccepts</c> until Kestrel takes them with AcceptAsync.
/// </summary>
internal sealed class EpollConnectionListener : IConnectionListener
{
    private readonly Channel<EpollConnection> _accepted = Channel.CreateUnbounded<EpollConnection>(
        new UnboundedChannelOptions { SingleReader = false, SingleWriter = false });
    private readonly List<ListenSocket> _sockets;
    private readonly List<AcceptRegistration> _registrations = [];
    private readonly string? _unixSocketPath;
    private readonly Func<Task> _onDisposed;
    private readonly int _maxPending;
    private int _pending;
    private int _pausedRegistrations;
    private int _unbound;
    private int _acceptsClosed;
    private int _disposed;

    private readonly ProxyProtocolEndpoint? _proxyProtocol;

    /// <summary>Anyone can connect from an untrusted address as often as they like: logged at most once a second.</summary>
    private readonly LogThrottle _untrustedLog = new(TimeSpan.FromSeconds(1));
    private readonly string _endPointName;
    private int _awaitingHeaders;
    private TaskCompletionSource? _headersSettled;

    private EpollConnectionListener(EndPoint endPoint, List<ListenSocket> sockets, TransportContext context, string? unixSocketPath, Func<Task> onDisposed, ProxyProtocolEndpoint? proxyProtocol)
    {
        _proxyProtocol = proxyProtocol;
        _endPointName = endPoint.ToString() ?? "?";
        EndPoint = endPoint;
        _sockets = sockets;
        Context = context;
        Logger = context.Logger;
        _unixSocketPath = unixSocketPath;
        _onDisposed = onDisposed;
        _maxPending = context.Options.MaxPendingAccepts;
    }

    public EndPoint EndPoint { get; }

    public TransportContext Context { get; }

    public ILogger Logger { get; }

    public bool IsQueueFull => Volatile.Read(ref _pending) >= _maxPending;

    /// <summary>A TCP port bound with AllowPortSharing: other processes may be in its SO_REUSEPORT group.</summary>
    public bool IsSharedPort => Context.Options.AllowPortSharing && _sockets[0].IsTcp && _sockets[0].OwnsFd;

    public int PendingCount => Volatile.Read(ref _pending);

    /// <summary>Binds <paramref name="endPoint"/> and registers its socket(s) in every loop. With
    /// <paramref name="proxyProtocol"/>, every connection must start with a PROXY protocol header from a trusted proxy.</summary>
    public static EpollConnectionListener Bind(EndPoint endPoint, EpollThreadGroup group, TransportContext context, Func<Task> onDisposed, ProxyProtocolEndpoint? proxyProtocol = null)
    {
        EpollTransportOptions options = context.Options;
        EpollLoop[] loops = group.Loops;
        var sockets = new List<ListenSocket>();
        string? unixPath = null;
        bool exclusive;
        try
        {
            switch (endPoint)
            {
                case IPEndPoint ip when options.AcceptDistribution == EpollAcceptDistribution.ReusePort && loops.Length > 1:
                    // Without AllowPortSharing the probe proves nobody holds the port (a plain bind fails where
                    // SO_REUSEPORT would join another process's group). With it, joining is the point: the probe
                    // is only needed to turn port 0 into one real port for all the sockets.
                    IPEndPoint reserved = options.AllowPortSharing && ip.Port != 0 ? ip : ListenSocket.ReserveForReusePort(ip);
                    for (int i = 0; i < loops.Length; i++)
                    {
                        sockets.Add(ListenSocket.Bind(reserved, options.Backlog, reusePort: true));
                    }

                    exclusive = false;
                    break;
                case IPEndPoint ip when options.AllowPortSharing:
                    // One socket shared by the loops (EPOLLEXCLUSIVE), in the port's SO_REUSEPORT group with the
                    // other processes' sockets. Port 0 is resolved by a probe first, as above, so the kernel never
                    // picks a port that another group already uses.
                    sockets.Add(ListenSocket.Bind(ip.Port == 0 ? ListenSocket.ReserveForReusePort(ip) : ip, options.Backlog, reusePort: true));
                    exclusive = true;
                    break;
                case IPEndPoint ip:
                    sockets.Add(ListenSocket.Bind(ip, options.Backlog, reusePort: false));
                    exclusive = true;
                    break;
                case UnixDomainSocketEndPoint unix:
                    sockets.Add(ListenSocket.Bind(unix, options.Backlog, reusePort: false));
                    unixPath = unix.ToString();
                    exclusive = true;
                    break;
                case FileHandleEndPoint handle:
                    sockets.Add(ListenSocket.Adopt(handle));
                    exclusive = true;
                    break;
                default:
                    throw new NotSupportedException($"The epoll transport cannot listen on {endPoint.GetType().Name}.");
            }
        }
        catch
        {
            foreach (ListenSocket socket in sockets)
            {
                socket.Close();
            }

            throw;
        }

        var listener = new EpollConnectionListener(sockets[0].EndPoint, sockets, context, unixPath, onDisposed, proxyProtocol);
        for (int i = 0; i < loops.Length; i++)
        {
            // One socket per loop with SO_REUSEPORT; otherwise the one socket in every loop with EPOLLEXCLUSIVE.
            ListenSocket socket = sockets.Count == loops.Length ? sockets[i] : sockets[0];
            var registration = new AcceptRegistration(listener, socket, loops[i], exclusive && loops.Length > 1);
            listener._registrations.Add(registration);
            registration.Register();
        }

        EpollLog.Listening(context.Logger, listener.EndPoint.ToString() ?? "?", sockets.Count,
            sockets.Count > 1 ? EpollAcceptDistribution.ReusePort : EpollAcceptDistribution.Exclusive);
        if (listener.IsSharedPort && !TcpMigrateReq.IsEnabled())
        {
            EpollLog.SharedPortWithoutMigration(context.Logger, listener.EndPoint.ToString() ?? "?");
        }

        if (proxyProtocol is not null)
        {
            EpollLog.ProxyProtocolRequired(context.Logger, listener._endPointName, proxyProtocol.TrustedText, proxyProtocol.HeaderTimeoutMs);
        }

        return listener;
    }

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        ChannelReader<EpollConnection> reader = _accepted.Reader;
        while (true)
        {
            if (reader.TryRead(out EpollConnection? connection))
            {
                Interlocked.Decrement(ref _pending);
                ResumePausedRegistrations();
                return connection;
            }

            if (!await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                // Unbound: Kestrel stops its accept loop on null. Never an exception, or it stops for good.
                return null;
            }
        }
    }

    /// <summary>On a loop's thread: the loop makes the accepted socket its connection; the listener queues it for Kestrel.</summary>
    public void OnAccepted(int fd, EpollLoop loop, EndPoint? remote, ListenSocket socket)
    {
        if (Volatile.Read(ref _acceptsClosed) != 0)
        {
            _ = Libc.close(fd);
            return;
        }

        ProxyProtocolEndpoint? proxy = _proxyProtocol;
        if (proxy is not null && !proxy.IsTrusted(remote, unixSocket: !socket.IsTcp))
        {
            // Refused before anything is read: only a trusted proxy may say who the client is (the specification's
            // section 5). A RST (SO_LINGER 0), so the peer learns at once and no FIN_WAIT/TIME_WAIT state is kept.
            _ = Libc.SetLingerZero(fd);
            _ = Libc.close(fd);
            Context.Metrics.ProxyProtocolUntrusted();
            if (_untrustedLog.TryEnter(out long heldBack))
            {
                EpollLog.ProxyProtocolUntrusted(Logger, _endPointName, remote?.ToString() ?? "?", heldBack);
            }

            return;
        }

        EpollConnection? connection = loop.SetUpAccepted(fd, socket, remote);
        if (connection is null)
        {
            return;
        }

        // Counted from now: a connection still reading its header is one the server has not taken yet.
        Interlocked.Increment(ref _pending);
        if (proxy is not null)
        {
            // Queued by the connection itself once its header is parsed (EpollConnection.ProxyHeader.cs).
            Interlocked.Increment(ref _awaitingHeaders);
            connection.ExpectProxyHeader(new ProxyHeaderState(proxy, this, connection));
            return;
        }

        Enqueue(connection);
    }

    /// <summary>On the connection's loop: queues a pending connection (counted at accept) for Kestrel.</summary>
    private void Enqueue(EpollConnection connection)
    {
        if (!_accepted.Writer.TryWrite(connection))
        {
            // Unbound in between: the connection was never handed out, so close it here.
            Interlocked.Decrement(ref _pending);
            connection.Abort(new ConnectionAbortedException("The listener was unbound."));
        }
    }

    /// <summary>On the connection's loop: its PROXY protocol header is parsed; queue it for Kestrel.</summary>
    public void EnqueueAfterHeader(EpollConnection connection)
    {
        Enqueue(connection);
        HeaderSettled();
    }

    /// <summary>A connection counted at accept closed before it was queued (its PROXY protocol header failed).</summary>
    public void OnHandOverAbandoned()
    {
        Interlocked.Decrement(ref _pending);
        HeaderSettled();
        ResumePausedRegistrations();
    }

    private void HeaderSettled()
    {
        if (Interlocked.Decrement(ref _awaitingHeaders) == 0)
        {
            Volatile.Read(ref _headersSettled)?.TrySetResult();
        }
    }

    public void OnRegistrationPaused(AcceptRegistration registration) => Interlocked.Increment(ref _pausedRegistrations);

    public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _unbound, 1) != 0)
        {
            return;
        }

        // Each loop leaves the epoll set on its own thread (it may be inside accept4 on the fd right now); the last
        // one out closes the fd, so the port is released and new connections are refused (or, on a shared port, go
        // to the other processes in its SO_REUSEPORT group).
        //
        // A shared port (AllowPortSharing) is how a new process takes over from this one, so no connection the kernel
        // already tied to this process's socket may be lost: the kernel routes each SYN to one socket of the group
        // and, at close, resets that socket's accept queue and half-open handshakes unless net.ipv4.tcp_migrate_req
        // is 1, which moves them to another socket of the group (kernel ip-sysctl docs; see TcpMigrateReq). With it,
        // closing at once is right: the queued connections go to the process that is starting, not to this one,
        // which is about to ask every connection to close. Without it, each loop first accepts until EAGAIN, so the
        // queue is empty when it closes: only a SYN that the kernel routes here between that last accept4 and the
        // close (microseconds, on the same thread) is still lost. Closing the listener is the only way to leave the
        // group (shutdown(SHUT_RD) on a listener aborts its queue just like close), so the window cannot be shut
        // from user space; docs/DEPLOYMENT.md measures both settings.
        string endPointName = EndPoint.ToString() ?? "?";
        bool drain = false;
        if (IsSharedPort)
        {
            drain = !TcpMigrateReq.IsEnabled();
            if (!drain)
            {
                EpollLog.SharedPortMigrating(Logger, endPointName);
            }
        }

        int drained = 0;
        var removed = new List<Task>(_registrations.Count);
        foreach (AcceptRegistration registration in _registrations)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            registration.Loop.Schedule(static state =>
            {
                var (r, tcs, drainFirst) = ((AcceptRegistration, TaskCompletionSource, bool))state!;
                if (drainFirst)
                {
                    r.DrainAndRemove();
                }
                else
                {
                    r.Remove();
                }

                tcs.TrySetResult();
            }, (registration, done, drain));
            removed.Add(done.Task);
        }

        // A loop that already stopped removed its registration when it stopped and runs no more work.
        try
        {
            await Task.WhenAll(removed).WaitAsync(TimeSpan.FromSeconds(5), cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // A loop that is stopping runs no more work; it removes its registrations itself as it stops.
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Only the wait is given up: the loops still remove their registrations, and the rest of the unbind must
            // run. Kestrel passes an already cancelled token when another endpoint failed to bind during start-up
            // (it disposes the listeners it bound): throwing here would replace that AddressInUseException.
        }

        if (drain)
        {
            foreach (AcceptRegistration registration in _registrations)
            {
                drained += registration.Drained;
            }

            EpollLog.SharedPortDrained(Logger, endPointName, drained);
        }

        if (_proxyProtocol is { } proxy)
        {
            // Connections accepted before the unbind that are still reading their PROXY protocol header are as good as
            // queued ones: let them be queued before the queue completes (or be closed by their header timeout), so a
            // rolling restart behind a proxy does not reset them. Exchange, not a volatile write: the publication must
            // not be reordered after the read of the count (a store-load pair); HeaderSettled decrements, then reads.
            var settled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Interlocked.Exchange(ref _headersSettled, settled);
            if (Volatile.Read(ref _awaitingHeaders) > 0)
            {
                try
                {
                    await settled.Task.WaitAsync(TimeSpan.FromMilliseconds(proxy.HeaderTimeoutMs + (proxy.HeaderTimeoutMs / 8) + 1000), cancellationToken).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    // A loop that stopped closed them; anything left is closed when its header completes or times out.
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    // As above: only the wait is given up.
                }
            }
        }

        // Connections accepted but not taken yet stay in the queue: Kestrel keeps calling AcceptAsync until it
        // returns null (it awaits its accept loop right after UnbindAsync), so they are served and then asked to
        // close like every other connection, instead of being reset. DisposeAsync aborts any that nobody took.
        Volatile.Write(ref _acceptsClosed, 1);
        _accepted.Writer.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            await UnbindAsync().ConfigureAwait(false);
            while (_accepted.Reader.TryRead(out EpollConnection? connection))
            {
                Interlocked.Decrement(ref _pending);
                connection.Abort(new ConnectionAbortedException("The listener was disposed before the connection was taken."));
            }
        }
        finally
        {
            if (_unixSocketPath is not null)
            {
                try
                {
                    File.Delete(_unixSocketPath);
                }
                catch (IOException)
                {
                    // Already gone, or replaced by someone else's file: either way not ours to fail on.
                }
                catch (UnauthorizedAccessException)
                {
                }
            }

            await _onDisposed().ConfigureAwait(false);
        }
    }

    private void ResumePausedRegistrations()
    {
        if (Volatile.Read(ref _pausedRegistrations) == 0 || Volatile.Read(ref _pending) > _maxPending / 2)
        {
            return;
        }

        Interlocked.Exchange(ref _pausedRegistrations, 0);
        foreach (AcceptRegistration registration in _registrations)
        {
            registration.Loop.Schedule(static state => ((AcceptRegistration)state!).Resume(), registration);
        }
    }
}

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
    private int _disposed;

    private EpollConnectionListener(EndPoint endPoint, List<ListenSocket> sockets, TransportContext context, string? unixSocketPath, Func<Task> onDisposed)
    {
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

    public int PendingCount => Volatile.Read(ref _pending);

    /// <summary>Binds <paramref name="endPoint"/> and registers its socket(s) in every loop.</summary>
    public static EpollConnectionListener Bind(EndPoint endPoint, EpollThreadGroup group, TransportContext context, Func<Task> onDisposed)
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
                    IPEndPoint reserved = ListenSocket.ReserveForReusePort(ip);
                    for (int i = 0; i < loops.Length; i++)
                    {
                        sockets.Add(ListenSocket.Bind(reserved, options.Backlog, reusePort: true));
                    }

                    exclusive = false;
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

        var listener = new EpollConnectionListener(sockets[0].EndPoint, sockets, context, unixPath, onDisposed);
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
        if (Volatile.Read(ref _unbound) != 0)
        {
            _ = Libc.close(fd);
            return;
        }

        EpollConnection? connection = loop.SetUpAccepted(fd, socket, remote);
        if (connection is null)
        {
            return;
        }

        Interlocked.Increment(ref _pending);
        if (!_accepted.Writer.TryWrite(connection))
        {
            // Unbound in between: the connection was never handed out, so close it here.
            Interlocked.Decrement(ref _pending);
            connection.Abort(new ConnectionAbortedException("The listener was unbound."));
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
        // one out closes the fd, so the port is released and new connections are refused.
        var removed = new List<Task>(_registrations.Count);
        foreach (AcceptRegistration registration in _registrations)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            registration.Loop.Schedule(static state =>
            {
                var (r, tcs) = ((AcceptRegistration, TaskCompletionSource))state!;
                r.Remove();
                tcs.TrySetResult();
            }, (registration, done));
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

        _accepted.Writer.TryComplete();
        while (_accepted.Reader.TryRead(out EpollConnection? connection))
        {
            Interlocked.Decrement(ref _pending);
            connection.Abort(new ConnectionAbortedException("The listener was unbound before the connection was taken."));
        }
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

using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// One outbound connect to one address, on one loop. The socket is created and connect(2) is called on the caller's
/// thread (as .NET's sockets do); a connect that cannot complete at once (EINPROGRESS, every TCP connect but the
/// rarest) waits in the loop's epoll set for EPOLLOUT, and SO_ERROR then says how the handshake ended (connect(2),
/// "EINPROGRESS"). A connected socket becomes an <see cref="EpollConnection"/> through the same set-up as an accepted
/// one (<see cref="EpollLoop.SetUpConnection"/>), with a fresh id: the id this waiting had is never reused either.
/// </summary>
/// <remarks>
/// Everything after connect(2) (the event, the timeout, a cancellation, the loop stopping) runs on the loop's thread,
/// so exactly one of them finishes the connect and the others find it done; the fd is closed only there.
/// </remarks>
internal sealed class OutboundConnect : IEpollHandler
{
    /// <summary>The interest while connecting: writable means the handshake ended (EPOLLERR and EPOLLHUP are always
    /// reported too, epoll_ctl(2)). Edge-triggered, so the registration can become the connection's by EPOLL_CTL_MOD.</summary>
    private const uint ConnectingEvents = Libc.EPOLLOUT | Libc.EPOLLET;

    private static readonly Action<object?> s_begin = static state => ((OutboundConnect)state!).Run(static c => c.BeginWaiting());
    private static readonly Action<object?> s_connectedAtOnce = static state => ((OutboundConnect)state!).Run(static c => c.Connected());
    private static readonly Action<object?> s_timedOut = static state => ((TimeoutTicket)state!).Connect?.TimedOut();
    private static readonly Action<object?> s_canceled = static state => ((OutboundConnect)state!).Canceled();

    private readonly TaskCompletionSource<ConnectionContext> _result = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly EndPoint _remote;
    private readonly bool _isTcp;
    private readonly CancellationToken _cancellationToken;
    private readonly TimeSpan _timeout;
    private CancellationTokenRegistration _cancellation;
    private TimeoutTicket? _timeoutTicket;
    private int _fd;
    private bool _inTable;
    private bool _done;

    private OutboundConnect(EpollLoop loop, int fd, EndPoint remote, bool isTcp, TimeSpan timeout, CancellationToken cancellationToken)
    {
        Loop = loop;
        _fd = fd;
        _remote = remote;
        _isTcp = isTcp;
        _timeout = timeout;
        _cancellationToken = cancellationToken;
    }

    public ulong Id { get; set; }

    public EpollLoop Loop { get; }

    /// <summary>
    /// Connects to <paramref name="remote"/> (an <see cref="IPEndPoint"/> or a <see cref="UnixDomainSocketEndPoint"/>)
    /// through <paramref name="loop"/>. Fails with the <see cref="SocketException"/> of the errno, a
    /// <see cref="TimeoutException"/> after <paramref name="timeout"/>, or an <see cref="OperationCanceledException"/>.
    /// </summary>
    public static unsafe Task<ConnectionContext> StartAsync(EpollLoop loop, EndPoint remote, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            loop.Context.Metrics.ConnectFailed("Canceled");
            return Task.FromCanceled<ConnectionContext>(cancellationToken);
        }

        (int domain, bool isTcp) = remote switch
        {
            IPEndPoint ip => (ip.AddressFamily == AddressFamily.InterNetworkV6 ? Libc.AF_INET6 : Libc.AF_INET, true),
            UnixDomainSocketEndPoint => (Libc.AF_UNIX, false),
            _ => throw new NotSupportedException($"The epoll transport cannot connect to {remote.GetType().Name} endpoints."),
        };

        ConnectErrors.AddressFamilyKind kind = isTcp ? ConnectErrors.AddressFamilyKind.Ip : ConnectErrors.AddressFamilyKind.Unix;
        int fd = Libc.socket(domain, Libc.SOCK_STREAM | Libc.SOCK_NONBLOCK | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            return Failed(loop, ConnectErrors.ToException(Errno.Last, remote, kind));
        }

        Span<byte> address = stackalloc byte[Libc.SockAddrStorageSize];
        int length = SockAddr.Write(remote, address);
        int rc;
        fixed (byte* p = address)
        {
            rc = Libc.connect(fd, p, length);
        }

        Error error = rc == 0 ? Error.Success : Errno.Last;
        if (error is not (Error.Success or Error.EINPROGRESS))
        {
            _ = Libc.close(fd);
            return Failed(loop, ConnectErrors.ToException(error, remote, kind));
        }

        var connect = new OutboundConnect(loop, fd, remote, isTcp, timeout, cancellationToken);

        // Registered before the fd is handed to the loop, so the loop always sees the registration (Schedule's enqueue
        // is a full fence). A cancellation may then reach the loop before s_begin: it fails the connect and closes the
        // fd, and s_begin finds the connect done.
        if (cancellationToken.CanBeCanceled)
        {
            connect._cancellation = cancellationToken.UnsafeRegister(
                static state => { var c = (OutboundConnect)state!; c.Loop.Schedule(s_canceled, c); }, connect);
        }

        // From here on the fd belongs to the loop.
        loop.Schedule(error == Error.Success ? s_connectedAtOnce : s_begin, connect);
        return connect._result.Task;
    }

    public void OnEvents(uint events)
    {
        if (_done)
        {
            return;
        }

        Error error = Libc.TakeSocketError(_fd);
        if (error != Error.Success)
        {
            SocketException exception = ConnectErrors.ToException(error, _remote, _isTcp ? ConnectErrors.AddressFamilyKind.Ip : ConnectErrors.AddressFamilyKind.Unix);
            Fail(exception, exception.SocketErrorCode.ToString());
        }
        else if ((events & Libc.EPOLLOUT) != 0)
        {
            Connected();
        }

        // Anything else (no error, not writable yet) is not the end of the handshake: the next edge is.
    }

    public void OnLoopStopping()
        => Fail(new ConnectionAbortedException($"The epoll transport stopped while connecting to {_remote}."), "Shutdown");

    /// <summary>On the loop: the connect is in progress; wait for EPOLLOUT, or the timeout.</summary>
    private void BeginWaiting()
    {
        if (_done)
        {
            return;
        }

        Loop.Table.Add(this);
        _inTable = true;
        Error error = Loop.Register(_fd, ConnectingEvents, Id);
        if (error != Error.Success)
        {
            // EBADF: the loop has stopped (its epoll fd is closed) and this runs as its late work.
            Fail(Loop.HasStopped
                ? new ConnectionAbortedException($"The epoll transport stopped while connecting to {_remote}.")
                : new IOException($"epoll_ctl for the connect to {_remote} failed: {Errno.Describe(error)}"),
                Loop.HasStopped ? "Shutdown" : error.ToString());
            return;
        }

        // A loop timer: no timer object and no thread per connect. It holds a ticket, emptied when the connect ends, so
        // the loop's timer queue does not keep a finished connect (and its connection) alive until the timeout is due.
        _timeoutTicket = new TimeoutTicket(this);
        Loop.RunAfter((long)Math.Ceiling(_timeout.TotalMilliseconds), s_timedOut, _timeoutTicket);
    }

    /// <summary>Runs a step on the loop; a step that throws (a bug) fails the connect instead of leaving it waiting.</summary>
    private void Run(Action<OutboundConnect> step)
    {
        try
        {
            step(this);
        }
        catch (Exception ex)
        {
            var failure = new IOException($"Connecting to {_remote} failed in the transport.", ex);
            Fail(failure, "Error");
            _result.TrySetException(failure);
            throw;
        }
    }

    /// <summary>On the loop: the handshake completed; the socket becomes a connection of this loop.</summary>
    private void Connected()
    {
        if (_done)
        {
            return;
        }

        _done = true;
        Finish();
        bool inEpollSet = _inTable;
        if (_inTable)
        {
            Loop.Table.Remove(Id);
            _inTable = false;
        }

        int fd = _fd;
        _fd = -1;
        if (Loop.HasStopped)
        {
            // Connected at once, but the loop stopped before it ran this (late work): nobody would serve it.
            _ = Libc.close(fd);
            Loop.Context.Metrics.ConnectFailed("Shutdown");
            _result.TrySetException(new ConnectionAbortedException($"The epoll transport stopped while connecting to {_remote}."));
            return;
        }

        EndPoint? local = SockAddr.LocalOf(fd);
        EpollConnection? connection = Loop.SetUpConnection(fd, _isTcp, local, _remote, EpollConnectionDirection.Outbound, inEpollSet, out Error error);
        if (connection is null)
        {
            Loop.Context.Metrics.ConnectFailed(error.ToString());
            _result.TrySetException(new IOException($"epoll_ctl for the connection to {_remote} failed: {Errno.Describe(error)}"));
            return;
        }

        if (!_result.TrySetResult(connection))
        {
            connection.Abort(new ConnectionAbortedException("Nobody awaited the connect."));
        }
    }

    private void TimedOut()
        => Fail(new TimeoutException($"Connecting to {_remote} timed out after {_timeout} (EpollTransportOptions.ConnectTimeout)."), "ConnectTimeout");

    private void Canceled()
        => Fail(new OperationCanceledException($"The connect to {_remote} was canceled.", _cancellationToken), "Canceled");

    private void Fail(Exception exception, string metricTag)
    {
        if (_done)
        {
            return;
        }

        _done = true;
        Finish();
        if (_inTable)
        {
            // The table first, so an event already queued for this id in the current turn is dropped.
            Loop.Table.Remove(Id);
            _inTable = false;
        }

        int fd = _fd;
        _fd = -1;
        if (fd >= 0)
        {
            // Closing also takes the fd out of the epoll set (epoll(7)).
            _ = Libc.close(fd);
        }

        Loop.Context.Metrics.ConnectFailed(metricTag);
        _result.TrySetException(exception);
    }

    /// <summary>The connect ended: neither the token's registration nor the timer keeps it alive any more.</summary>
    private void Finish()
    {
        _cancellation.Unregister();
        if (_timeoutTicket is { } ticket)
        {
            ticket.Connect = null;
            _timeoutTicket = null;
        }
    }

    private static Task<ConnectionContext> Failed(EpollLoop loop, SocketException exception)
    {
        loop.Context.Metrics.ConnectFailed(exception.SocketErrorCode.ToString());
        return Task.FromException<ConnectionContext>(exception);
    }

    /// <summary>What the loop's timer holds: the connect while it is in progress, nothing after.</summary>
    private sealed class TimeoutTicket(OutboundConnect connect)
    {
        public OutboundConnect? Connect { get; set; } = connect;
    }
}

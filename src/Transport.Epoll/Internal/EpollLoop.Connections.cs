using System.Net;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// The loop's own list of its connections (intrusive, so adding and removing allocate nothing) and the idle check
/// that walks it. A read or write only stores <see cref="Now"/> in its connection; the loop looks every
/// <c>IdleTimeout / 8</c> (at most every second) and closes connections quiet for the whole timeout. Walking a list
/// of 10,000 connections costs microseconds, a few times a second: nothing per byte, nothing per event.
/// </summary>
internal sealed partial class EpollLoop
{
    private readonly long _idleTimeoutMs;
    private readonly long _idleScanIntervalMs;
    private EpollConnection? _connections;
    private long _nextIdleScan;

    /// <summary>Open connections owned by this loop.</summary>
    public int ConnectionCount { get; private set; }

    /// <summary>
    /// Makes a socket accepted on this loop's thread a connection of this loop (see <see cref="SetUpConnection"/>).
    /// Null when the registration failed (the fd is closed then, and the failure logged).
    /// </summary>
    public EpollConnection? SetUpAccepted(int fd, ListenSocket socket, EndPoint? remote)
    {
        // A wildcard listener's connections each have the address the peer actually reached (getsockname).
        EndPoint? local = socket.EndPoint is IPEndPoint ip && (ip.Address.Equals(IPAddress.Any) || ip.Address.Equals(IPAddress.IPv6Any))
            ? SockAddr.LocalOf(fd)
            : socket.EndPoint;

        EpollConnection? connection = SetUpConnection(fd, socket.IsTcp, local, remote, EpollConnectionDirection.Inbound, inEpollSet: false, out Error error);
        if (connection is null)
        {
            EpollLog.ConnectionSetupFailed(_logger, socket.EndPoint.ToString() ?? "?", error.ToString());
        }
        else
        {
            // Before Kestrel has the connection, so before its handler can make it addressable (what a broadcast to
            // this endpoint matches).
            connection.ListenEndPoint = socket.EndPoint;
        }

        return connection;
    }

    /// <summary>
    /// Makes a connected socket a connection of this loop, on this loop's thread, whoever opened it (accept4, or the
    /// connection factory's connect): socket options, an id in the table, its registration in the epoll set with the
    /// connection's events, its send side started. A socket already in the epoll set (an outbound connect waited there
    /// for EPOLLOUT) is modified instead of added; EPOLL_CTL_MOD re-checks readiness, so bytes the peer sent meanwhile
    /// raise EPOLLIN at once (epoll_ctl(2)). Null, with the fd closed, when the registration failed.
    /// </summary>
    public EpollConnection? SetUpConnection(int fd, bool isTcp, EndPoint? local, EndPoint? remote, EpollConnectionDirection direction, bool inEpollSet, out Error error)
    {
        if (isTcp)
        {
            TcpOptions.Apply(fd, Context.Options);
        }

        var connection = new EpollConnection(fd, this, local, remote, direction);
        Table.Add(connection);
        error = inEpollSet
            ? Rearm(fd, EpollConnection.ConnectionEvents, connection.Id)
            : Register(fd, EpollConnection.ConnectionEvents, connection.Id);
        if (error != Error.Success)
        {
            Table.Remove(connection.Id);
            _ = Libc.close(fd);
            return null;
        }

        Context.Metrics.ConnectionOpened(direction);
        connection.Start();
        return connection;
    }

    public void AddConnection(EpollConnection connection)
    {
        connection.NextOnLoop = _connections;
        if (_connections is not null)
        {
            _connections.PreviousOnLoop = connection;
        }

        _connections = connection;
        ConnectionCount++;
    }

    public void RemoveConnection(EpollConnection connection)
    {
        if (connection.PreviousOnLoop is { } previous)
        {
            previous.NextOnLoop = connection.NextOnLoop;
        }
        else if (_connections == connection)
        {
            _connections = connection.NextOnLoop;
        }
        else
        {
            return;
        }

        if (connection.NextOnLoop is { } next)
        {
            next.PreviousOnLoop = connection.PreviousOnLoop;
        }

        connection.NextOnLoop = null;
        connection.PreviousOnLoop = null;
        ConnectionCount--;
    }

    /// <summary>epoll_wait's timeout when nothing is queued: forever, or until the next idle check is due.</summary>
    private int IdleWaitTimeout()
    {
        if (_idleTimeoutMs == 0 || _connections is null)
        {
            return -1;
        }

        long wait = _nextIdleScan - Environment.TickCount64;
        return wait <= 0 ? 0 : (int)Math.Min(wait, int.MaxValue);
    }

    private void CloseIdleConnections()
    {
        if (_idleTimeoutMs == 0 || Now < _nextIdleScan)
        {
            return;
        }

        _nextIdleScan = Now + _idleScanIntervalMs;
        long now = Now;
        EpollConnection? connection = _connections;
        while (connection is not null)
        {
            EpollConnection? next = connection.NextOnLoop;
            if (now - connection.LastActivity >= _idleTimeoutMs)
            {
                try
                {
                    connection.CloseIdle();
                }
                catch (Exception ex)
                {
                    HandlerFailed(connection, ex);
                }
            }

            connection = next;
        }
    }
}

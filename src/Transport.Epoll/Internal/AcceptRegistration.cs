using System.Net;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// A listening socket registered in one loop. On EPOLLIN the loop accepts, sets the new connection up on itself and
/// hands it to the listener's queue. Level-triggered on purpose: a registration that stops early (its batch, the
/// listener's queue full) is simply asked again by the kernel, with no state to remember.
/// </summary>
internal sealed unsafe class AcceptRegistration : IEpollHandler
{
    /// <summary>Connections accepted per event, so a connection storm cannot starve the loop's connections.</summary>
    private const int AcceptsPerEvent = 64;

    private const int MinBackOffMs = 10;
    private const int PausedRecheckMs = 50;
    private const int MaxBackOffMs = 1000;

    /// <summary>The kernel caps a listen queue at net.core.somaxconn (4096 by default since Linux 5.4); twice that
    /// covers the handshakes that complete while the drain runs.</summary>
    private const int MaxDrainedPerSocket = 8192;

    private readonly EpollConnectionListener _listener;
    private readonly ListenSocket _socket;
    private readonly uint _interest;
    private readonly string _endPointName;
    private bool _registered;
    private bool _removed;
    private int _backOffMs;

    public AcceptRegistration(EpollConnectionListener listener, ListenSocket socket, EpollLoop loop, bool exclusive)
    {
        _listener = listener;
        _socket = socket;
        Loop = loop;
        _interest = Libc.EPOLLIN | (exclusive ? Libc.EPOLLEXCLUSIVE : 0);
        _endPointName = socket.EndPoint.ToString() ?? "?";
    }

    public ulong Id { get; set; }

    /// <summary>The listening endpoint, as text (for logs).</summary>
    public string EndPointName => _endPointName;

    public EpollLoop Loop { get; }

    /// <summary>Adds the socket to the loop's epoll set (callable from any thread: epoll_ctl is thread-safe).</summary>
    public void Register()
    {
        Loop.Table.Add(this);
        _socket.AddRegistration();
        Arm();
    }

    public void OnEvents(uint events)
    {
        if (_removed || !_registered)
        {
            return;
        }

        byte* address = stackalloc byte[Libc.SockAddrStorageSize];
        for (int i = 0; i < AcceptsPerEvent; i++)
        {
            if (_listener.IsQueueFull)
            {
                // The application is not taking connections: stop accepting; the kernel's backlog holds the rest
                // (and then refuses). The listener resumes us when its queue drains.
                Disarm();
                _listener.OnRegistrationPaused(this);

                // The listener may have drained its queue between our check and the pause being recorded, and then
                // seen no paused registration to resume. Both sides write, fence, then read the other's counter,
                // so at least one of them sees the other: look again and resume ourselves if so.
                if (!_listener.IsQueueFull)
                {
                    Arm();
                    continue;
                }

                EpollLog.AcceptPaused(_listener.Logger, _endPointName, _listener.PendingCount);

                // Belt and braces: while paused, look again every PausedRecheckMs, so no ordering of the listener's
                // resume and this pause can leave the registration disarmed for good.
                Loop.RunAfter(PausedRecheckMs, static state => ((AcceptRegistration)state!).ResumeIfRoom(), this);
                return;
            }

            int length = Libc.SockAddrStorageSize;
            int fd = Libc.Accept(_socket.Fd, address, &length);
            if (fd < 0)
            {
                Error error = Errno.Last;
                if (error == Error.EAGAIN)
                {
                    return;
                }

                if (Errno.IsTransientAcceptError(error))
                {
                    EpollLog.AcceptTransientError(_listener.Logger, _endPointName, error.ToString());
                    continue;
                }

                if (Errno.IsResourceExhausted(error))
                {
                    BackOff(error);
                    return;
                }

                // EBADF, EINVAL...: the listening socket itself is broken. Stop this registration, not the process.
                EpollLog.AcceptFailed(_listener.Logger, _endPointName, error.ToString());
                Disarm();
                return;
            }

            _backOffMs = 0;
            EndPoint? remote = SockAddr.Read(new ReadOnlySpan<byte>(address, length));
            _listener.OnAccepted(fd, Loop, remote, _socket);
        }
    }

    /// <summary>Back in the epoll set after a pause (queue drained) or a back-off; on the loop's thread.</summary>
    public void Resume()
    {
        if (!_removed && !_registered)
        {
            Arm();
        }
    }

    private void ResumeIfRoom()
    {
        if (_removed || _registered)
        {
            return;
        }

        if (_listener.IsQueueFull)
        {
            Loop.RunAfter(PausedRecheckMs, static state => ((AcceptRegistration)state!).ResumeIfRoom(), this);
            return;
        }

        Arm();
    }

    /// <summary>Leaves the epoll set for good (unbind), on the loop's thread; the last loop out closes the fd.</summary>
    public void Remove()
    {
        if (_removed)
        {
            return;
        }

        _removed = true;
        Disarm();
        Loop.Table.Remove(Id);
        _socket.ReleaseRegistration();
    }

    public void OnLoopStopping() => Remove();

    /// <summary>Connections <see cref="DrainAndRemove"/> accepted (read after the unbind's wait, for the log).</summary>
    public int Drained { get; private set; }

    /// <summary>
    /// Unbind of a shared port without tcp_migrate_req, on the loop's thread: accepts what the kernel already queued
    /// on the socket (the listener still hands them to Kestrel), then leaves the epoll set like
    /// <see cref="Remove"/>; the last loop out closes the fd right after its last accept4 returned EAGAIN.
    /// Bounded: a flood of SYNs cannot keep the loop here; what is left after the bound is reset by the close.
    /// </summary>
    public void DrainAndRemove()
    {
        if (_removed)
        {
            return;
        }

        Disarm();
        byte* address = stackalloc byte[Libc.SockAddrStorageSize];
        for (int i = 0; i < MaxDrainedPerSocket; i++)
        {
            int length = Libc.SockAddrStorageSize;
            int fd = Libc.Accept(_socket.Fd, address, &length);
            if (fd < 0)
            {
                if (Errno.IsTransientAcceptError(Errno.Last))
                {
                    continue;
                }

                break; // EAGAIN: the queue is empty. Anything else: nothing more can be taken from this socket.
            }

            Drained++;
            EndPoint? remote = SockAddr.Read(new ReadOnlySpan<byte>(address, length));
            _listener.OnAccepted(fd, Loop, remote, _socket);
        }

        Remove();
    }

    private void Arm()
    {
        if (Loop.Register(_socket.Fd, _interest, Id) == Error.Success)
        {
            _registered = true;
        }
    }

    private void Disarm()
    {
        if (_registered)
        {
            // EPOLLEXCLUSIVE registrations cannot be modified (EPOLL_CTL_MOD fails with EINVAL), only removed and
            // added again, so pausing is always DEL and resuming ADD.
            _ = Loop.Unregister(_socket.Fd);
            _registered = false;
        }
    }

    private void BackOff(Error error)
    {
        // Out of fds (EMFILE/ENFILE) or memory: the pending connection stays in the kernel's queue, so the socket
        // stays readable and a level-triggered registration would spin a core. Leave the epoll set and come back
        // later, doubling the wait while the condition lasts.
        Disarm();
        _backOffMs = Math.Clamp(_backOffMs * 2, MinBackOffMs, MaxBackOffMs);
        _listener.Context.Metrics.AcceptBackOff();
        EpollLog.AcceptBackOff(_listener.Logger, _endPointName, error.ToString(), _backOffMs);
        // A loop timer, not a System.Threading.Timer: starting the runtime's timer thread needs fds, which is
        // exactly what just ran out.
        Loop.RunAfter(_backOffMs, static state => ((AcceptRegistration)state!).Resume(), this);
    }
}

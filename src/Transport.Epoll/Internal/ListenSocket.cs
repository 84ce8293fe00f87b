using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>A listening fd: one we created and bound (and will close), or one handed to us (never closed by us).</summary>
internal sealed class ListenSocket
{
    private int _registrations;

    private ListenSocket(int fd, bool ownsFd, EndPoint endPoint)
    {
        Fd = fd;
        OwnsFd = ownsFd;
        EndPoint = endPoint;
    }

    public int Fd { get; private set; }

    public bool OwnsFd { get; }

    /// <summary>The address actually bound (with the real port when port 0 was asked for).</summary>
    public EndPoint EndPoint { get; }

    public bool IsTcp => EndPoint is IPEndPoint;

    /// <summary>Counts a loop that registers this socket; see <see cref="ReleaseRegistration"/>.</summary>
    public void AddRegistration() => Interlocked.Increment(ref _registrations);

    /// <summary>Called by each loop after it unregistered the socket; the last one closes the fd (if ours).</summary>
    public void ReleaseRegistration()
    {
        if (Interlocked.Decrement(ref _registrations) == 0)
        {
            Close();
        }
    }

    public void Close()
    {
        int fd = Fd;
        Fd = -1;
        if (fd >= 0 && OwnsFd)
        {
            _ = Libc.close(fd);
        }
    }

    /// <summary>socket, options, bind and listen for an IP or Unix endpoint.</summary>
    public static ListenSocket Bind(EndPoint endPoint, int backlog, bool reusePort)
    {
        int fd = CreateBound(endPoint, reusePort);
        try
        {
            if (Libc.listen(fd, backlog) != 0)
            {
                throw new IOException($"listen({endPoint}) failed: {Errno.Describe(Errno.Last)}");
            }

            EndPoint bound = endPoint is IPEndPoint ? SockAddr.LocalOf(fd) ?? endPoint : endPoint;
            return new ListenSocket(fd, ownsFd: true, bound);
        }
        catch
        {
            _ = Libc.close(fd);
            throw;
        }
    }

    /// <summary>
    /// Checks that nobody holds <paramref name="endPoint"/> before SO_REUSEPORT sockets are bound to it: a plain
    /// bind fails with EADDRINUSE if any socket (ours or another process's) has the port, where SO_REUSEPORT would
    /// silently share it. Also resolves port 0 to a real port that all the loops' sockets then share.
    /// The probe is closed just before the first SO_REUSEPORT bind (a socket without SO_REUSEPORT on the port would
    /// make those binds fail): a process that grabs the port in those microseconds is not detected.
    /// </summary>
    public static IPEndPoint ReserveForReusePort(IPEndPoint endPoint)
    {
        int fd = CreateBound(endPoint, reusePort: false);
        try
        {
            return (IPEndPoint)(SockAddr.LocalOf(fd) ?? endPoint);
        }
        finally
        {
            _ = Libc.close(fd);
        }
    }

    /// <summary>A non-blocking, close-on-exec socket with the listener's options, bound to <paramref name="endPoint"/>.</summary>
    private static unsafe int CreateBound(EndPoint endPoint, bool reusePort)
    {
        int domain = endPoint switch
        {
            IPEndPoint ip => ip.AddressFamily == AddressFamily.InterNetworkV6 ? Libc.AF_INET6 : Libc.AF_INET,
            UnixDomainSocketEndPoint => Libc.AF_UNIX,
            _ => throw new NotSupportedException($"The epoll transport cannot listen on {endPoint.GetType().Name}."),
        };

        int fd = Libc.socket(domain, Libc.SOCK_STREAM | Libc.SOCK_NONBLOCK | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"socket() for {endPoint} failed: {Errno.Describe(Errno.Last)}");
        }

        try
        {
            if (domain != Libc.AF_UNIX)
            {
                // Rebind at once after a restart even with connections in TIME-WAIT, as .NET's sockets do on Unix.
                ThrowIfFailed(Libc.SetIntOption(fd, Libc.SOL_SOCKET, Libc.SO_REUSEADDR, 1), "SO_REUSEADDR", endPoint);
                if (reusePort)
                {
                    ThrowIfFailed(Libc.SetIntOption(fd, Libc.SOL_SOCKET, Libc.SO_REUSEPORT, 1), "SO_REUSEPORT", endPoint);
                }

                if (domain == Libc.AF_INET6)
                {
                    // IPv6Any listens dual-mode (IPv4 peers appear as ::ffff:a.b.c.d), as Kestrel's Sockets transport does.
                    int v6Only = ((IPEndPoint)endPoint).Address.Equals(IPAddress.IPv6Any) ? 0 : 1;
                    ThrowIfFailed(Libc.SetIntOption(fd, Libc.IPPROTO_IPV6, Libc.IPV6_V6ONLY, v6Only), "IPV6_V6ONLY", endPoint);
                }
            }

            Span<byte> address = stackalloc byte[Libc.SockAddrStorageSize];
            int length = SockAddr.Write(endPoint, address);
            fixed (byte* p = address)
            {
                if (Libc.bind(fd, p, length) != 0)
                {
                    Error error = Errno.Last;
                    throw error == Error.EADDRINUSE
                        ? new AddressInUseException($"{endPoint} is already in use ({Errno.Describe(error)}).")
                        : new IOException($"bind({endPoint}) failed: {Errno.Describe(error)}");
                }
            }

            return fd;
        }
        catch
        {
            _ = Libc.close(fd);
            throw;
        }
    }

    /// <summary>
    /// An already listening fd (systemd socket activation, another process): never closed by us, made non-blocking
    /// and close-on-exec. Every process that holds the fd shares one accept queue, so a new process given the same
    /// fd (systemd keeps it open across restarts) takes over without a connection being reset: the old one only
    /// leaves its epoll sets, and whatever is queued waits for the new one.
    /// </summary>
    public static ListenSocket Adopt(FileHandleEndPoint endPoint)
    {
        int fd = checked((int)endPoint.FileHandle);
        if (Libc.GetIntOption(fd, Libc.SOL_SOCKET, Libc.SO_ACCEPTCONN, out int listening) != 0)
        {
            throw new IOException($"File handle {fd} is not a usable socket: {Errno.Describe(Errno.Last)}");
        }

        if (listening == 0)
        {
            throw new InvalidOperationException($"File handle {fd} is a socket that is not listening; call listen() on it before handing it over.");
        }

        if (Libc.SetNonBlocking(fd) != 0)
        {
            throw new IOException($"Could not make file handle {fd} non-blocking: {Errno.Describe(Errno.Last)}");
        }

        if (Libc.SetCloseOnExec(fd) != 0)
        {
            throw new IOException($"Could not make file handle {fd} close-on-exec: {Errno.Describe(Errno.Last)}");
        }

        return new ListenSocket(fd, ownsFd: false, SockAddr.LocalOf(fd) ?? endPoint);
    }

    private static void ThrowIfFailed(int result, string option, EndPoint endPoint)
    {
        if (result != 0)
        {
            throw new IOException($"setsockopt({option}) for {endPoint} failed: {Errno.Describe(Errno.Last)}");
        }
    }
}

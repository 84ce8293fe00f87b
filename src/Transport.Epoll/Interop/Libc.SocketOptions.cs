using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    public const int SOL_SOCKET = 1;
    public const int SO_REUSEADDR = 2;
    public const int SO_TYPE = 3;
    public const int SO_ERROR = 4;
    public const int SO_SNDBUF = 7;
    public const int SO_RCVBUF = 8;
    public const int SO_KEEPALIVE = 9;
    public const int SO_LINGER = 13;
    public const int SO_REUSEPORT = 15;
    public const int SO_ACCEPTCONN = 30;
    public const int SO_DOMAIN = 39;

    public const int IPPROTO_TCP = 6;
    public const int IPPROTO_IPV6 = 41;
    public const int TCP_NODELAY = 1;
    public const int TCP_KEEPIDLE = 4;
    public const int TCP_KEEPINTVL = 5;
    public const int TCP_KEEPCNT = 6;
    public const int TCP_USER_TIMEOUT = 18;
    public const int TCP_NOTSENT_LOWAT = 25;
    public const int IPV6_V6ONLY = 26;

    [StructLayout(LayoutKind.Sequential)]
    public struct Linger
    {
        public int OnOff;
        public int Seconds;
    }

    [LibraryImport(Name, SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int optname, void* optval, int optlen);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int optname, void* optval, int* optlen);

    public static int SetIntOption(int fd, int level, int name, int value) => setsockopt(fd, level, name, &value, sizeof(int));

    public static int GetIntOption(int fd, int level, int name, out int value)
    {
        int v = 0;
        int len = sizeof(int);
        int rc = getsockopt(fd, level, name, &v, &len);
        value = v;
        return rc;
    }

    /// <summary>
    /// getsockopt(SO_ERROR): the socket's pending error, which the call also clears; after a non-blocking connect, 0
    /// means connected and anything else is why the connect failed (connect(2), "EINPROGRESS").
    /// </summary>
    public static Error TakeSocketError(int fd)
    {
        if (GetIntOption(fd, SOL_SOCKET, SO_ERROR, out int pending) != 0)
        {
            return Errno.Last;
        }

        return (Error)pending;
    }

    /// <summary>SO_LINGER {on, 0}: close(2) then discards unsent data and sends a RST instead of a FIN.</summary>
    public static int SetLingerZero(int fd)
    {
        var linger = new Linger { OnOff = 1, Seconds = 0 };
        return setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(Linger));
    }
}

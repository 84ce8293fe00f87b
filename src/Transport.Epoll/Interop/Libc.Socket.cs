using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    public const int AF_UNIX = 1;
    public const int AF_INET = 2;
    public const int AF_INET6 = 10;

    public const int SOCK_STREAM = 1;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;

    public const int SHUT_RD = 0;
    public const int SHUT_WR = 1;
    public const int SHUT_RDWR = 2;

    /// <summary>send(2): a dead peer is an EPIPE error, never a SIGPIPE that kills the process.</summary>
    public const int MSG_NOSIGNAL = 0x4000;
    public const int MSG_DONTWAIT = 0x40;

    /// <summary>sizeof(struct sockaddr_storage).</summary>
    public const int SockAddrStorageSize = 128;

    [LibraryImport(Name, SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int bind(int fd, byte* addr, int addrlen);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int listen(int fd, int backlog);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int accept4(int fd, byte* addr, int* addrlen, int flags);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int shutdown(int fd, int how);

    /// <summary>recv(2): read(2) for a socket, without the file layer's work that read(2) does first (the position
    /// lock and the permission hooks of vfs_read): 0.1-0.2 us less per call on loopback (benchmarks/load/recv_vs_read.c).</summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial nint recv(int fd, void* buf, nuint len, int flags);

    /// <summary>send(2): one buffer, without the msghdr and iovec that sendmsg(2) copies in from user space.</summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial nint send(int fd, void* buf, nuint len, int flags);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int getsockname(int fd, byte* addr, int* addrlen);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int getpeername(int fd, byte* addr, int* addrlen);
}

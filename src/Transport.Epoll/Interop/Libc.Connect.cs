using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    /// <summary>
    /// connect(2). On a non-blocking socket a TCP connect that cannot complete at once fails with EINPROGRESS: the
    /// socket becomes writable when the handshake ends, and SO_ERROR then says how it ended (connect(2), "EINPROGRESS").
    /// A Unix stream socket connects at once, or fails with EAGAIN when the listener's backlog is full (unix(7)).
    /// </summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial int connect(int fd, byte* addr, int addrlen);
}

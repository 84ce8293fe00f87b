using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    public const int F_GETFD = 1;
    public const int F_SETFD = 2;
    public const int FD_CLOEXEC = 1;
    public const int F_GETFL = 3;
    public const int F_SETFL = 4;
    public const int O_NONBLOCK = 0x800;

    [LibraryImport(Name, SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);

    /// <summary>Makes an fd we did not open (a handed-over listening socket) non-blocking, so a spurious wake-up
    /// never blocks a loop inside accept4.</summary>
    public static int SetNonBlocking(int fd)
    {
        int flags = fcntl(fd, F_GETFL, 0);
        return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    }

    /// <summary>
    /// Sets FD_CLOEXEC on an fd we did not open. A listening fd handed over by systemd (sd_listen_fds(3)) or a parent
    /// arrives without it, because it had to survive the exec that started us; left so, every child process the app
    /// starts inherits the listening socket and keeps the port open after we exit (dotnet/aspnetcore#29189).
    /// </summary>
    public static int SetCloseOnExec(int fd)
    {
        int flags = fcntl(fd, F_GETFD, 0);
        return flags < 0 ? -1 : (flags & FD_CLOEXEC) != 0 ? 0 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;

    [LibraryImport(Name, SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    /// <summary>
    /// Adds one to an eventfd's counter (eventfd(2): a write of an 8-byte integer). Returns 0, or -1 with errno set.
    /// </summary>
    public static int SignalEventFd(int fd)
    {
        FaultInjection.BeforeEventFdWrite?.Invoke(fd);
        ulong one = 1;
        return write(fd, &one, sizeof(ulong)) < 0 ? -1 : 0;
    }
}

using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

internal static unsafe partial class Libc
{
    public const int EPOLL_CLOEXEC = 0x80000;
    public const int EPOLL_CTL_ADD = 1;
    public const int EPOLL_CTL_DEL = 2;
    public const int EPOLL_CTL_MOD = 3;

    public const uint EPOLLIN = 0x001;
    public const uint EPOLLPRI = 0x002;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    public const uint EPOLLRDHUP = 0x2000;
    public const uint EPOLLEXCLUSIVE = 1u << 28;
    public const uint EPOLLET = 1u << 31;

    [LibraryImport(Name, SetLastError = true)]
    public static partial int epoll_create1(int flags);

    [LibraryImport(Name, SetLastError = true)]
    public static partial int epoll_ctl(int epfd, int op, int fd, void* @event);

    /// <summary>Blocks up to <paramref name="timeout"/> ms; -1 waits forever. <paramref name="events"/> is an array of
    /// <see cref="EpollEvent.Size"/>-byte records.</summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial int epoll_wait(int epfd, void* events, int maxevents, int timeout);

    /// <summary>Registers, modifies or removes <paramref name="fd"/>; <paramref name="data"/> comes back with each event.</summary>
    public static int EpollControl(int epfd, int op, int fd, uint events, ulong data)
    {
        byte* ev = stackalloc byte[EpollEvent.MaxSize];
        EpollEvent.Write(ev, 0, events, data);
        return epoll_ctl(epfd, op, fd, ev);
    }
}

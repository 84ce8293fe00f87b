using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>The calls behind the sendfile fast path: the copy itself, and what the transport asks of the file first.</summary>
internal static unsafe partial class Libc
{
    public const int F_DUPFD_CLOEXEC = 1030;
    private const int AT_EMPTY_PATH = 0x1000;
    private const uint STATX_TYPE = 0x1;
    private const uint STATX_SIZE = 0x200;
    private const ushort S_IFMT = 0xF000;
    private const ushort S_IFREG = 0x8000;

    /// <summary>cachestat(2) is Linux 6.5+ and glibc has no wrapper; new syscalls share one number on every architecture.</summary>
    private const long SYS_cachestat = 451;

    /// <summary>
    /// sendfile(2): copies <paramref name="count"/> bytes of <paramref name="inFd"/> from <paramref name="offset"/>
    /// to the socket inside the kernel. On a non-blocking socket it returns what fitted in the send buffer (EAGAIN when
    /// nothing did) and advances <paramref name="offset"/> by the bytes sent; 0 means the file ended at the offset.
    /// </summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial nint sendfile(int outFd, int inFd, long* offset, nuint count);

    [LibraryImport(Name, EntryPoint = "statx", SetLastError = true)]
    private static partial int statx(int dirfd, byte* path, int flags, uint mask, byte* buffer);

    [LibraryImport(Name, EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall4(long number, long a1, long a2, long a3, long a4);

    /// <summary>
    /// Whether <paramref name="fd"/> is a regular file, and its size. statx(2), not fstat: <c>struct statx</c> has
    /// one layout on every architecture (stx_mode is the u16 at byte 28, stx_size the u64 at byte 40).
    /// </summary>
    public static Error StatFile(int fd, out bool isRegular, out long size)
    {
        byte* buffer = stackalloc byte[256];
        byte empty = 0;
        if (statx(fd, &empty, AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE, buffer) != 0)
        {
            isRegular = false;
            size = 0;
            return Errno.Last;
        }

        ushort mode = *(ushort*)(buffer + 28);
        isRegular = (mode & S_IFMT) == S_IFREG;
        size = *(long*)(buffer + 40);
        return Error.Success;
    }

    /// <summary>
    /// How many pages of <c>[offset, offset + length)</c> are in the page cache, and how many the range spans, with
    /// cachestat(2). A sendfile(2) of a fully cached range never waits for the disk; any other may block its caller
    /// (non-blocking sockets do not make file reads non-blocking). Returns false when the kernel cannot tell (ENOSYS
    /// before 6.5, a file system without a page cache).
    /// </summary>
    public static bool TryCountCachedPages(int fd, long offset, long length, out long cached, out long total)
    {
        // struct cachestat_range { __u64 off; __u64 len; }; struct cachestat { __u64 nr_cache, nr_dirty, nr_writeback,
        // nr_evicted, nr_recently_evicted; }
        long* range = stackalloc long[2];
        long* stat = stackalloc long[5];
        range[0] = offset;
        range[1] = length;
        long pageSize = Environment.SystemPageSize;
        total = ((offset + length - 1) / pageSize) - (offset / pageSize) + 1;
        if (syscall4(SYS_cachestat, fd, (long)range, (long)stat, 0) != 0)
        {
            cached = 0;
            return false;
        }

        cached = stat[0];
        return true;
    }

    /// <summary>A second descriptor for the same socket (fcntl(2) F_DUPFD_CLOEXEC), for a thread-pool worker: the
    /// loop may close its own descriptor meanwhile, and the number must never reach the fd's next owner.</summary>
    public static int Duplicate(int fd) => fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

internal static unsafe partial class Libc
{
    private const int POSIX_FADV_DONTNEED = 4;

    [LibraryImport(Name, EntryPoint = "posix_fadvise")]
    private static partial int posix_fadvise(int fd, long offset, long length, int advice);

    /// <summary>Drops a file's clean pages from the page cache (posix_fadvise(2) POSIX_FADV_DONTNEED): how the tests
    /// and benchmarks make a file cold without root. Returns the error number, 0 on success.</summary>
    public static int EvictFromPageCache(int fd) => posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

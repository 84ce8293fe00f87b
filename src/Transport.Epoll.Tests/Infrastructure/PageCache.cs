using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// What of a file is in the page cache, seen two ways: mincore(2) over a mapping of the file, which every kernel has
/// and the transport does not use (so it checks the test's own premise: the file really is cold, or hot), and whether
/// cachestat(2), which the transport asks, answers on this kernel.
/// </summary>
internal static unsafe partial class PageCache
{
    private const int PROT_READ = 1;
    private const int MAP_SHARED = 1;

    /// <summary>Pages of the file in the page cache and pages it spans, from mincore(2).</summary>
    public static (long Resident, long Total) Count(string path)
    {
        using SafeFileHandle file = File.OpenHandle(path);
        long length = RandomAccess.GetLength(file);
        long pageSize = Environment.SystemPageSize;
        long total = (length + pageSize - 1) / pageSize;
        if (total == 0)
        {
            return (0, 0);
        }

        // A mapping reads nothing by itself: mincore reports the cache's state without changing it.
        nint address = mmap(0, (nuint)length, PROT_READ, MAP_SHARED, (int)file.DangerousGetHandle(), 0);
        if (address == -1)
        {
            throw new InvalidOperationException($"mmap of {path} failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        try
        {
            byte[] vector = new byte[total];
            fixed (byte* v = vector)
            {
                if (mincore(address, (nuint)length, v) != 0)
                {
                    throw new InvalidOperationException($"mincore of {path} failed: errno {Marshal.GetLastPInvokeError()}.");
                }
            }

            return (vector.LongCount(b => (b & 1) != 0), total);
        }
        finally
        {
            munmap(address, (nuint)length);
        }
    }

    /// <summary>Whether cachestat(2) answers for this file: when it does not, the transport sends every slice from a worker.</summary>
    public static bool CacheStatAnswers(string path)
    {
        using SafeFileHandle file = File.OpenHandle(path);
        return Libc.TryCountCachedPages((int)file.DangerousGetHandle(), 0, Math.Max(1, RandomAccess.GetLength(file)), out _, out _);
    }

    /// <summary>Reads the whole file, so its pages are in the cache.</summary>
    public static void Warm(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1024 * 1024);
        var buffer = new byte[1024 * 1024];
        while (stream.Read(buffer) > 0)
        {
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint address, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mincore(nint address, nuint length, byte* vector);
}

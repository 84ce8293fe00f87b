using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>One element of the array that <c>readv</c>/<c>writev</c> take (<c>struct iovec</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IOVector
{
    public void* Base;
    public nuint Count;
}

internal static unsafe partial class Libc
{
    /// <summary>writev(2) takes at most IOV_MAX (1024 on Linux) elements per call.</summary>
    public const int IOV_MAX = 1024;

    [LibraryImport(Name, SetLastError = true)]
    public static partial nint read(int fd, void* buf, nuint count);

    [LibraryImport(Name, SetLastError = true)]
    public static partial nint write(int fd, void* buf, nuint count);

    [LibraryImport(Name, SetLastError = true)]
    public static partial nint readv(int fd, IOVector* iov, int iovcnt);

    [LibraryImport(Name, SetLastError = true)]
    public static partial nint writev(int fd, IOVector* iov, int iovcnt);

    /// <summary>close(2). Never retried on EINTR: on Linux the fd is released even then, and a retry could close
    /// a descriptor another thread has just been given.</summary>
    [LibraryImport(Name, SetLastError = true)]
    public static partial int close(int fd);
}

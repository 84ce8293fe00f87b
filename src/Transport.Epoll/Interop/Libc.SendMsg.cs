using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary><c>struct msghdr</c> (64-bit Linux layout; the runtime's LP64 platforms share it).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct MessageHeader
{
    public void* Name;
    public uint NameLength;
    public IOVector* Vectors;
    public nuint VectorCount;
    public void* Control;
    public nuint ControlLength;
    public int Flags;
}

internal static unsafe partial class Libc
{
    [LibraryImport(Name, SetLastError = true)]
    public static partial nint sendmsg(int fd, MessageHeader* msg, int flags);

    /// <summary>
    /// writev(2) with <see cref="MSG_NOSIGNAL"/>: gathers the same iovecs, but a peer that is gone yields EPIPE
    /// instead of a SIGPIPE that would kill the process (send(2), "MSG_NOSIGNAL").
    /// </summary>
    public static nint SendVectors(int fd, IOVector* vectors, int count)
    {
        MessageHeader header = default;
        header.Vectors = vectors;
        header.VectorCount = (nuint)count;
        return sendmsg(fd, &header, MSG_NOSIGNAL);
    }
}

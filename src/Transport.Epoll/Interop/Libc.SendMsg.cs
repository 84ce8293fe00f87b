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
}

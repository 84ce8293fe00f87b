namespace Transport.Epoll.Interop;

/// <summary>
/// The libc calls the transport makes, one syscall family per file (Libc.*.cs). Every call sets errno through
/// <c>SetLastError = true</c>; read it with <see cref="Errno.Last"/> right after a call that returned -1.
/// </summary>
internal static unsafe partial class Libc
{
    internal const string Name = "libc";
}

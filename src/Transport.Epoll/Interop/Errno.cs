using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>The errno values the transport acts on. Linux uses the asm-generic numbers on x86-64 and arm64 alike.</summary>
internal enum Error
{
    Success = 0,
    EPERM = 1,
    ENOENT = 2,
    EINTR = 4,
    EBADF = 9,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EINVAL = 22,
    ENFILE = 23,
    EMFILE = 24,
    EPIPE = 32,
    ENOSYS = 38,
    EPROTO = 71,
    EOPNOTSUPP = 95,
    EAFNOSUPPORT = 97,
    EADDRINUSE = 98,
    EADDRNOTAVAIL = 99,
    ENETDOWN = 100,
    ENETUNREACH = 101,
    ECONNABORTED = 103,
    ECONNRESET = 104,
    ENOBUFS = 105,
    EISCONN = 106,
    ENOTCONN = 107,
    ETIMEDOUT = 110,
    ECONNREFUSED = 111,
    EHOSTDOWN = 112,
    EHOSTUNREACH = 113,
    EALREADY = 114,
    EINPROGRESS = 115,
}

/// <summary>errno as a typed value, and the few predicates the rest of the transport uses instead of errno checks.</summary>
internal static class Errno
{
    /// <summary>errno of the last <c>SetLastError = true</c> call on this thread.</summary>
    public static Error Last => (Error)Marshal.GetLastPInvokeError();

    /// <summary>The peer reset the connection: <c>recv</c>/<c>send</c> report ECONNRESET, or EPIPE for a send after it.</summary>
    public static bool IsPeerGone(Error error) => error is Error.ECONNRESET or Error.EPIPE;

    /// <summary>
    /// The kernel gave up on the peer: unacknowledged data outlived TCP_USER_TIMEOUT (zero-window probes included), or
    /// keepalive probes went unanswered (tcp(7)). Not a reset: the peer may never have said anything.
    /// </summary>
    public static bool IsTimedOut(Error error) => error == Error.ETIMEDOUT;

    /// <summary>The socket failed (as opposed to a file being read for sendfile): a reset, a timeout, or not connected.</summary>
    public static bool IsSocketFailure(Error error) => IsPeerGone(error) || IsTimedOut(error) || error == Error.ENOTCONN;

    /// <summary>
    /// accept4(2): "Linux accept() passes already-pending network errors on the new socket as an error code from
    /// accept()"; these, and a connection aborted before we took it, are about that one connection, not the listener.
    /// </summary>
    public static bool IsTransientAcceptError(Error error) => error is Error.EINTR or Error.ECONNABORTED or Error.EPROTO
        or Error.ENETDOWN or Error.ENETUNREACH or Error.EHOSTUNREACH or Error.ETIMEDOUT or Error.EPERM;

    /// <summary>Out of descriptors or kernel memory: the listener must back off instead of spinning.</summary>
    public static bool IsResourceExhausted(Error error) => error is Error.EMFILE or Error.ENFILE or Error.ENOBUFS or Error.ENOMEM;

    public static string Describe(Error error) => $"{error} ({(int)error}): {Marshal.GetPInvokeErrorMessage((int)error)}";
}

using System.Net;
using System.Net.Sockets;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// What a failed outbound connect throws: the <see cref="SocketException"/> a user of .NET's sockets gets for the same
/// errno (ConnectionRefused, NetworkUnreachable, HostUnreachable, TimedOut...), with the endpoint and the errno in the
/// message, so code that already handles Sockets' connect failures handles these unchanged.
/// </summary>
internal static class ConnectErrors
{
    public static SocketException ToException(Error error, EndPoint endPoint, AddressFamilyKind kind = AddressFamilyKind.Ip)
    {
        SocketError code = ToSocketError(error, kind);
        string detail = kind == AddressFamilyKind.Unix && error == Error.EAGAIN
            ? "the listener's backlog is full"
            : Errno.Describe(error);
        return new SocketException((int)code, $"Connecting to {endPoint} failed: {detail}.");
    }

    public static SocketError ToSocketError(Error error, AddressFamilyKind kind = AddressFamilyKind.Ip) => error switch
    {
        Error.ECONNREFUSED => SocketError.ConnectionRefused,

        // A Unix stream socket does not wait for a full backlog: connect fails at once with EAGAIN (unix(7)). To the
        // caller it is a refusal for now, as a TCP listener's RST would be.
        Error.EAGAIN when kind == AddressFamilyKind.Unix => SocketError.ConnectionRefused,
        Error.ENETUNREACH => SocketError.NetworkUnreachable,
        Error.EHOSTUNREACH => SocketError.HostUnreachable,
        Error.EHOSTDOWN => SocketError.HostDown,
        Error.ENETDOWN => SocketError.NetworkDown,
        Error.ETIMEDOUT => SocketError.TimedOut,
        Error.ECONNRESET => SocketError.ConnectionReset,
        Error.ECONNABORTED => SocketError.ConnectionAborted,
        Error.EADDRNOTAVAIL => SocketError.AddressNotAvailable,
        Error.EADDRINUSE => SocketError.AddressAlreadyInUse,
        Error.EAFNOSUPPORT => SocketError.AddressFamilyNotSupported,
        Error.EACCES or Error.EPERM => SocketError.AccessDenied,

        // A Unix socket path that does not exist: .NET's sockets report ENOENT the same way.
        Error.ENOENT => SocketError.AddressNotAvailable,
        Error.EMFILE or Error.ENFILE => SocketError.TooManyOpenSockets,
        Error.ENOBUFS or Error.ENOMEM => SocketError.NoBufferSpaceAvailable,
        Error.EINVAL => SocketError.InvalidArgument,
        _ => SocketError.SocketError,
    };

    /// <summary>The family of the socket being connected, where the same errno means different things.</summary>
    public enum AddressFamilyKind
    {
        Ip,
        Unix,
    }
}

namespace Transport.Epoll;

/// <summary>Why an epoll connection closed, as reported by <see cref="IEpollConnectionFeature.CloseReason"/>.</summary>
public enum EpollCloseReason
{
    /// <summary>The connection is still open.</summary>
    None = 0,

    /// <summary>The application completed its output (or disposed the connection) and the socket was closed gracefully.</summary>
    LocalClose = 1,

    /// <summary>The peer sent FIN: it closed or shut down its sending side.</summary>
    PeerClosed = 2,

    /// <summary>The peer reset the connection (<c>ECONNRESET</c>, or <c>EPIPE</c> for a send after its reset).</summary>
    PeerReset = 3,

    /// <summary>The application called <c>Abort()</c>; the peer got a RST.</summary>
    Aborted = 4,

    /// <summary>The connection saw no successful read or write for the configured idle timeout.</summary>
    IdleTimeout = 5,

    /// <summary>A socket error other than a reset; see <see cref="IEpollConnectionFeature.CloseError"/>.</summary>
    Error = 6,

    /// <summary>The transport was shut down while the connection was open.</summary>
    TransportShutdown = 7,

    /// <summary>
    /// The kernel gave up on the peer (<c>ETIMEDOUT</c>): data stayed unacknowledged, or the peer's window stayed
    /// closed, past <c>TcpUserTimeout</c>, or keepalive probes went unanswered. A peer that vanished or stopped reading.
    /// </summary>
    TimedOut = 8,

    /// <summary>
    /// The endpoint requires a PROXY protocol header and the connection's was malformed, or the peer closed before it
    /// was complete; see <see cref="IEpollConnectionFeature.CloseError"/>. The connection was never handed to the
    /// application.
    /// </summary>
    ProxyHeaderInvalid = 9,

    /// <summary>The endpoint requires a PROXY protocol header and it was not complete within
    /// <see cref="ProxyProtocolOptions.HeaderTimeout"/>. The connection was never handed to the application.</summary>
    ProxyHeaderTimeout = 10,
}

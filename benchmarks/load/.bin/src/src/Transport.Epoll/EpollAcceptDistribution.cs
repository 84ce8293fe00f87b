namespace Transport.Epoll;

/// <summary>How a listening endpoint hands new connections to the event loops.</summary>
public enum EpollAcceptDistribution
{
    /// <summary>
    /// One listening socket per loop, all bound to the same address with <c>SO_REUSEPORT</c>; the kernel hashes each
    /// new connection to one of them. No shared accept queue, no thundering herd. Beware: another process of the same
    /// user that also sets <c>SO_REUSEPORT</c> can bind the same port and silently take a share of the connections
    /// instead of failing with "address in use".
    /// </summary>
    ReusePort = 0,

    /// <summary>
    /// One listening socket registered in every loop with <c>EPOLLEXCLUSIVE</c>; the kernel wakes one (or a few) loops
    /// per new connection. A busy loop takes fewer connections, and the port is never shared with another process.
    /// </summary>
    Exclusive = 1,
}

namespace Transport.Epoll;

/// <summary>What became of bytes written to a connection by its id (<see cref="IEpollConnections"/>).</summary>
public enum EpollWriteResult
{
    /// <summary>Queued on the connection: its loop sends them at the next boundary between the handler's flushes.</summary>
    Written = 0,

    /// <summary>
    /// Nothing was queued: the id is closed, never existed, belongs to another server, or names a connection that is not
    /// addressable (never marked, or an HTTP connection). Nothing is ever sent to whichever connection got the old id's
    /// file descriptor: the id's generation no longer matches.
    /// </summary>
    Gone = 1,

    /// <summary>
    /// Nothing was queued: the bytes already queued by id on the connection are at its write buffer limit
    /// (<see cref="EpollTransportOptions.MaxWriteBufferSize"/>), because its peer reads slower than it is written to.
    /// <see cref="IEpollConnections.WriteAsync"/> waits for room instead.
    /// </summary>
    Full = 2,
}

namespace Transport.Epoll;

/// <summary>
/// What the epoll transport knows about a connection. Get it from <c>ConnectionContext.Features</c>, or from
/// <c>HttpContext.Features</c> (HTTP request features fall back to the connection's).
/// </summary>
public interface IEpollConnectionFeature
{
    /// <summary>
    /// The connection's id: a slot in the connection table and a generation counter, never reused in the life of the
    /// process (unlike the file descriptor, which the kernel reuses as soon as it is closed).
    /// </summary>
    ulong Id { get; }

    /// <summary>
    /// Runs <paramref name="action"/> with the socket's file descriptor, on the connection's event loop, where the
    /// descriptor cannot be closed while the action runs: for socket options the transport does not set
    /// (<c>setsockopt</c>, <c>getsockopt</c>, <c>TCP_INFO</c>). The descriptor is valid only inside the action: once the
    /// connection closes, the kernel hands its number to the next socket or file it opens, so keeping the number and
    /// using it later could reach someone else's connection. Keep the action short and non-blocking (it runs on the
    /// loop that serves other connections) and do not close, read or write the descriptor.
    /// </summary>
    /// <returns>The action's result; runs inline when called on the loop itself.</returns>
    /// <exception cref="ObjectDisposedException">The connection is closed.</exception>
    Task<TResult> WithSocketAsync<TResult>(Func<int, TResult> action);

    /// <summary>Whether the connection was accepted on an endpoint or opened by <see cref="EpollConnectionFactory"/>.</summary>
    EpollConnectionDirection Direction { get; }

    /// <summary>The index of the event loop (the <c>epoll-N</c> thread) that owns the connection.</summary>
    int LoopIndex { get; }

    /// <summary>Why the connection closed; <see cref="EpollCloseReason.None"/> while it is open.</summary>
    EpollCloseReason CloseReason { get; }

    /// <summary>The error behind <see cref="CloseReason"/>, if there was one.</summary>
    Exception? CloseError { get; }
}

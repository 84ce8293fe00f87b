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

    /// <summary>The socket's file descriptor while it is open; -1 once closed.</summary>
    int FileDescriptor { get; }

    /// <summary>The index of the event loop (the <c>epoll-N</c> thread) that owns the connection.</summary>
    int LoopIndex { get; }

    /// <summary>Why the connection closed; <see cref="EpollCloseReason.None"/> while it is open.</summary>
    EpollCloseReason CloseReason { get; }

    /// <summary>The error behind <see cref="CloseReason"/>, if there was one.</summary>
    Exception? CloseError { get; }
}

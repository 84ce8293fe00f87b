namespace Transport.Epoll.Internal;

/// <summary>
/// Something registered in an event loop's epoll set: a connection or a listening socket. Its <see cref="Id"/> is what
/// the kernel hands back in <c>epoll_event.data</c>; the loop finds the handler through the <see cref="ConnectionTable"/>
/// and drops the event when the id no longer matches (the handler is gone and its slot, or its fd, was reused).
/// </summary>
internal interface IEpollHandler
{
    /// <summary>The never-reused id given by <see cref="ConnectionTable.Add"/>; 0 before that.</summary>
    ulong Id { get; set; }

    /// <summary>The loop whose thread runs this handler.</summary>
    EpollLoop Loop { get; }

    /// <summary>Called on the owning loop's thread with the <c>EPOLL*</c> bits of one event.</summary>
    void OnEvents(uint events);

    /// <summary>Called on the owning loop's thread when the loop stops with this handler still registered.</summary>
    void OnLoopStopping();
}

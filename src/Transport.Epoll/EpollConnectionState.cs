namespace Transport.Epoll;

/// <summary>Where a live connection stands, as <see cref="EpollConnectionInfo.State"/> reports it.</summary>
public enum EpollConnectionState
{
    /// <summary>Open both ways: bytes written by id go out.</summary>
    Open = 0,

    /// <summary>Its output has ended (a graceful close by id, or the handler completed its output): nothing more is
    /// sent, and writes by id answer <see cref="EpollWriteResult.Gone"/>.</summary>
    Closing = 1,
}

namespace Transport.Epoll;

/// <summary>Who opened a connection: a peer that connected to one of the server's endpoints, or this process.</summary>
public enum EpollConnectionDirection
{
    /// <summary>Accepted on an endpoint Kestrel listens on.</summary>
    Inbound = 0,

    /// <summary>Opened by <see cref="EpollConnectionFactory.ConnectAsync"/>.</summary>
    Outbound = 1,
}

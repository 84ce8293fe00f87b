namespace Transport.Epoll;

/// <summary>
/// The PROXY protocol (HAProxy's <c>doc/proxy-protocol.txt</c>, versions 1 and 2) on an endpoint: every connection
/// must start with a header that names the client, sent by one of <see cref="TrustedProxies"/>. Turned on per
/// endpoint with <c>listenOptions.UseProxyProtocol(...)</c>, or in configuration for the ports in
/// <see cref="Ports"/> (<c>Kestrel:Transport:Epoll:ProxyProtocol</c>). Never guessed: such an endpoint refuses
/// connections without a header, and an endpoint without it never looks for one (the specification's section 5).
/// </summary>
public sealed class ProxyProtocolOptions
{
    /// <summary>The default <see cref="HeaderTimeout"/>: the specification asks for at least 3 s, to cover a TCP retransmit.</summary>
    public static readonly TimeSpan DefaultHeaderTimeout = TimeSpan.FromSeconds(3);

    /// <summary>
    /// The proxies allowed to connect: addresses (<c>127.0.0.1</c>, <c>::1</c>) and CIDR ranges (<c>10.0.0.0/8</c>,
    /// <c>fd00::/8</c>). A connection from any other address is refused when it is accepted, before anything is read
    /// from it. An IPv4 peer on a dual-stack socket (<c>::ffff:a.b.c.d</c>) is matched as IPv4. Peers of a Unix domain
    /// socket endpoint have no address: the socket file's permissions decide who connects.
    /// </summary>
    /// <remarks>Required: at least one entry.</remarks>
    public IList<string> TrustedProxies { get; } = new List<string>();

    /// <summary>How long a connection has to deliver its complete header; past it the connection is closed with
    /// <see cref="EpollCloseReason.ProxyHeaderTimeout"/>.</summary>
    /// <remarks>Defaults to 3 s. Allowed: 10 ms to 10 minutes.</remarks>
    public TimeSpan HeaderTimeout { get; set; } = DefaultHeaderTimeout;

    /// <summary>
    /// Only in the transport's options (<see cref="EpollTransportOptions.ProxyProtocol"/>, configuration): the ports
    /// whose endpoints require the header. <c>UseProxyProtocol</c> applies to its own endpoint and ignores this.
    /// </summary>
    /// <remarks>Defaults to none. Allowed: 1 to 65535.</remarks>
    public IList<int> Ports { get; } = new List<int>();
}

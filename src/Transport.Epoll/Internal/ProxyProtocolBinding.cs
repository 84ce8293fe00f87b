namespace Transport.Epoll.Internal;

/// <summary>
/// Carries <c>UseProxyProtocol</c>'s settings from an endpoint's <c>ListenOptions</c> to the transport's BindAsync,
/// which gets only the <c>EndPoint</c>. Kestrel builds an endpoint's connection middleware and then binds it, in one
/// async flow (KestrelServerImpl's OnBind: <c>options.Build()</c>, then <c>TransportManager.BindAsync</c>, once per
/// endpoint, clones of ListenLocalhost and the IPv4 fall-back of ListenAnyIP included), so the middleware announces
/// its settings while it is built and BindAsync takes them. The flow is per OnBind call: an announcement never reaches
/// another endpoint's bind. Keyed by flow, not by EndPoint object: Kestrel clones endpoints, and two port-0 endpoints
/// are equal. Should Kestrel ever bind elsewhere, the middleware refuses every connection the transport did not read
/// a header for, so this fails closed.
/// </summary>
internal static class ProxyProtocolBinding
{
    private static readonly AsyncLocal<ProxyProtocolEndpoint?> s_announced = new();

    public static void Announce(ProxyProtocolEndpoint endpoint) => s_announced.Value = endpoint;

    /// <summary>The settings announced by the endpoint being bound, once.</summary>
    public static ProxyProtocolEndpoint? Take()
    {
        ProxyProtocolEndpoint? endpoint = s_announced.Value;
        if (endpoint is not null)
        {
            s_announced.Value = null;
        }

        return endpoint;
    }
}

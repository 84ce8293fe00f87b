using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Epoll;
using Transport.Epoll.Internal;

namespace Microsoft.AspNetCore.Hosting;

/// <summary>Turns on the PROXY protocol for one endpoint of the epoll transport.</summary>
[SupportedOSPlatform("linux")]
public static class ProxyProtocolListenOptionsExtensions
{
    /// <summary>
    /// Every connection to this endpoint must start with a PROXY protocol header (v1 or v2) from one of
    /// <see cref="ProxyProtocolOptions.TrustedProxies"/>; its client address becomes the connection's
    /// <c>RemoteEndPoint</c> (and <c>HttpContext.Connection.RemoteIpAddress</c>), and the header is available as
    /// <see cref="IProxyProtocolFeature"/>. The transport reads the header before it hands the connection over;
    /// connections from other addresses are refused, malformed or late headers close the connection. Only the epoll
    /// transport reads headers: on an endpoint another transport serves, every connection is refused (logged).
    /// </summary>
    /// <exception cref="ArgumentException">An option is out of range; the message names it.</exception>
    public static ListenOptions UseProxyProtocol(this ListenOptions listenOptions, Action<ProxyProtocolOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(listenOptions);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new ProxyProtocolOptions();
        configure(options);
        ProxyProtocolEndpoint endpoint = ProxyProtocolEndpoint.Create(options, nameof(ProxyProtocolOptions));
        ILogger? logger = null;

        listenOptions.Use(next =>
        {
            ProxyProtocolBinding.Announce(endpoint);
            return connection =>
            {
                if (connection.Features.Get<IProxyProtocolFeature>() is ProxyHeaderState { Complete: true } header && ReferenceEquals(header.Endpoint, endpoint))
                {
                    return next(connection);
                }

                logger ??= listenOptions.ApplicationServices.GetService<ILoggerFactory>()?.CreateLogger(EpollLog.Category);
                if (logger is not null)
                {
                    EpollLog.ProxyProtocolNotApplied(logger, connection.ConnectionId, connection.LocalEndPoint?.ToString() ?? "?");
                }

                connection.Abort(new ConnectionAbortedException("The endpoint requires the PROXY protocol and the connection was not read by the epoll transport."));
                return Task.CompletedTask;
            };
        });
        return listenOptions;
    }
}

using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll;
using Transport.Epoll.Hosting;
using Transport.Epoll.Internal;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the epoll transport in a service collection.</summary>
[SupportedOSPlatform("linux")]
public static class EpollTransportServiceCollectionExtensions
{
    /// <summary>
    /// Registers the epoll transport as Kestrel's <see cref="IConnectionListenerFactory"/>. Endpoints it declines
    /// (see <see cref="IConnectionListenerFactorySelector"/>) fall back to the factories registered before it. Also
    /// registers <see cref="EpollConnectionFactory"/> as the <see cref="IConnectionFactory"/>, on the same loops. Also registers
    /// <see cref="IEpollConnections"/>, which addresses the transport's connections by id.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">The system has no epoll; the message says why.</exception>
    public static IServiceCollection AddEpollTransport(this IServiceCollection services, Action<EpollTransportOptions>? configureOptions = null)
    {
        EpollTransportOptionsRegistration.Add(services, configureOptions);

        // Not TryAdd: Kestrel asks the last registered factory first, so this must come after the Sockets factory
        // that UseKestrel() registers, whichever of the two calls came first. Calling this twice registers one factory.
        if (!services.Any(static d => d.ServiceType == typeof(EpollTransportFactory)))
        {
            services.AddSingleton<EpollTransportFactory>();
            services.AddSingleton<IConnectionListenerFactory>(static sp => sp.GetRequiredService<EpollTransportFactory>());
            services.AddSingleton<IEpollConnections>(static sp => new EpollConnections(sp.GetRequiredService<EpollTransportFactory>()));
        }

        // Outbound connections on the same loops (IConnectionFactory, EpollConnectionFactory).
        EpollConnectionFactoryServiceCollectionExtensions.AddFactory(services);

        return services;
    }
}

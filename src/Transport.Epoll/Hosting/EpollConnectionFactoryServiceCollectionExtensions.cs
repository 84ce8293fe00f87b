using System.Diagnostics.Metrics;
using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Epoll;
using Transport.Epoll.Hosting;
using Transport.Epoll.Internal;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the epoll transport's outbound <see cref="IConnectionFactory"/> in a service collection.</summary>
[SupportedOSPlatform("linux")]
public static class EpollConnectionFactoryServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="EpollConnectionFactory"/> as the <see cref="IConnectionFactory"/>. With the epoll transport
    /// in the same container (<c>AddEpollTransport</c>/<c>UseEpollTransport</c>, which register the factory themselves)
    /// it shares the transport's loops and options; otherwise it has loops of its own, built from
    /// <see cref="EpollTransportOptions"/> (checked when the factory is first resolved) and stopped when the container
    /// is disposed. Calling this more than once registers one factory.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">The system has no epoll; the message says why.</exception>
    public static IServiceCollection AddEpollConnectionFactory(this IServiceCollection services, Action<EpollTransportOptions>? configureOptions = null)
    {
        EpollTransportOptionsRegistration.Add(services, configureOptions);
        AddFactory(services);
        return services;
    }

    /// <summary>The registration both entry points share: one factory, on the transport's loops when there is one.</summary>
    internal static void AddFactory(IServiceCollection services)
    {
        if (services.Any(static d => d.ServiceType == typeof(EpollConnectionFactory)))
        {
            return;
        }

        // Decided when the factory is first resolved, not here: AddEpollTransport may be called after this.
        services.AddSingleton(static sp => sp.GetService<EpollTransportFactory>() is { } transport
            ? new EpollConnectionFactory(transport.Loops)
            : new EpollConnectionFactory(
                sp.GetRequiredService<IOptions<EpollTransportOptions>>().Value,
                sp.GetService<ILoggerFactory>(),
                sp.GetService<IMeterFactory>()));

        // Not TryAdd: a host asks for the last registration, and this must win over any other registered before.
        services.AddSingleton<IConnectionFactory>(static sp => sp.GetRequiredService<EpollConnectionFactory>());
    }
}

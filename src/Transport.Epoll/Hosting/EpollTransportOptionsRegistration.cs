using System.Runtime.Versioning;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Transport.Epoll.Hosting;

/// <summary>
/// What <c>AddEpollTransport</c> and <c>AddEpollConnectionFactory</c> both register before their own services: the
/// options, the caller's configuration of them, and their validator. Either may be called first or both may be called,
/// so this must be safe to repeat: <c>Configure</c> adds one more step (the caller asked for it), the validator is
/// registered once.
/// </summary>
[SupportedOSPlatform("linux")]
internal static class EpollTransportOptionsRegistration
{
    /// <exception cref="PlatformNotSupportedException">The system has no epoll; the message says why.</exception>
    public static void Add(IServiceCollection services, Action<EpollTransportOptions>? configureOptions)
    {
        ArgumentNullException.ThrowIfNull(services);
        EpollTransport.ThrowIfUnsupported();

        OptionsBuilder<EpollTransportOptions> builder = services.AddOptions<EpollTransportOptions>();
        if (configureOptions is not null)
        {
            builder.Configure(configureOptions);
        }

        // Validated when the options are first read (the transport's or the factory's construction), so a bad value
        // fails start-up with the option's name and range rather than misbehaving later.
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<EpollTransportOptions>, EpollTransportOptionsValidator>());
    }
}

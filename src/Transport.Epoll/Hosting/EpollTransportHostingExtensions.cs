using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Transport.Epoll;
using Transport.Epoll.Hosting;
using Transport.Epoll.Internal;

namespace Microsoft.AspNetCore.Hosting;

/// <summary>Puts Kestrel on the epoll transport.</summary>
[SupportedOSPlatform("linux")]
public static class EpollTransportWebHostBuilderExtensions
{
    /// <summary>
    /// Makes Kestrel accept connections through the epoll transport. Options bind from the
    /// <c>Kestrel:Transport:Epoll</c> configuration section. Works before or after <c>UseKestrel()</c>.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">The system has no epoll; the message says why.</exception>
    public static IWebHostBuilder UseEpollTransport(this IWebHostBuilder hostBuilder)
        => hostBuilder.UseEpollTransport(static _ => { });

    /// <summary>As <see cref="UseEpollTransport(IWebHostBuilder)"/>, then applies <paramref name="configureOptions"/>
    /// after configuration binding, so code wins over configuration.</summary>
    public static IWebHostBuilder UseEpollTransport(this IWebHostBuilder hostBuilder, Action<EpollTransportOptions> configureOptions)
    {
        ArgumentNullException.ThrowIfNull(hostBuilder);
        ArgumentNullException.ThrowIfNull(configureOptions);
        EpollTransport.ThrowIfUnsupported();

        return hostBuilder.ConfigureServices((context, services) =>
        {
            IConfigurationSection section = context.Configuration.GetSection(EpollTransportOptions.ConfigurationSection);
            services.AddOptions<EpollTransportOptions>().Configure(options => EpollTransportOptionsBinder.Bind(section, options));
            services.AddEpollTransport(configureOptions);
        });
    }
}

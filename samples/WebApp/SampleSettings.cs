using System.Globalization;
using System.Net;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace WebApp;

/// <summary>The transports the sample can run on, chosen with <c>--Transport</c>.</summary>
internal enum SampleTransport
{
    Epoll,
    Sockets,
}

/// <summary>A command-line or configuration value the sample cannot use; the message says which and why.</summary>
internal sealed class SampleConfigurationException(string message) : Exception(message);

/// <summary>
/// The sample's switches, read from configuration (command line <c>--Key value</c>, <c>ASPNETCORE_</c> environment
/// variables, appsettings.json):
/// <list type="bullet">
/// <item><c>Transport</c>: <c>epoll</c> (default) or <c>sockets</c>, case-insensitive.</item>
/// <item><c>urls</c>: the HTTP/1.1 endpoints, <c>;</c>-separated, as Kestrel's <c>--urls</c>; without it
/// <c>http_ports</c>/<c>https_ports</c> as Kestrel reads them, else <c>http://localhost:5000</c>.</item>
/// <item><c>EchoPort</c>: the raw TCP echo port on all interfaces (default 5001; 0 picks a free port; negative: no echo endpoint).</item>
/// <item><c>FilePort</c>: a raw TCP file-serving port (<see cref="FileConnectionHandler"/>) on all interfaces (default
/// off; 0 picks a free port).</item>
/// <item><c>Files</c>: the folder <c>/files/{name}</c> and the file port serve (default <c>content/</c> next to the binary).</item>
/// <item><c>Http2Port</c>: an HTTP/2-only cleartext (prior knowledge, h2c) port on all interfaces (default off;
/// 0 picks a free port). Kestrel cannot offer HTTP/1.1 and HTTP/2 on one cleartext endpoint: without TLS there
/// is no ALPN, so it serves HTTP/1.1 only there.</item>
/// <item><c>ShutdownTimeout</c>: seconds a stopping sample lets requests and connections finish (the drain window)
/// before it aborts what is left (default: the host's, 30 s; 0 to 3600).</item>
/// <item><c>DrainDelay</c>: seconds a stopping sample keeps serving with <c>/ready</c> at 503 before it stops
/// accepting (default 0; 0 to 3600; see <see cref="DrainDelay"/>).</item>
/// <item><c>ProxyProtocol</c>: <c>true</c> makes the HTTP, h2c and echo endpoints require a PROXY protocol header
/// (epoll transport only; default <c>false</c>).</item>
/// <item><c>ProxyProtocolTrusted</c>: the proxies allowed to send it, <c>;</c>-separated addresses and CIDR ranges
/// (default <c>127.0.0.0/8;::1</c>).</item>
/// <item><c>ChatPort</c>: the raw TCP chat (<see cref="ChatConnectionHandler"/>) on all interfaces (default 5003; 0 picks a
/// free port; negative: off). Connections are addressed by id through the epoll transport's <c>IEpollConnections</c>;
/// with <c>--Transport sockets</c> through a dictionary of their pipes under a lock, the obvious equivalent.</item>
/// </list>
/// </summary>
internal sealed record SampleSettings(SampleTransport Transport, IReadOnlyList<BindingAddress> Urls, int EchoPort, int Http2Port, int FilePort, string? Files, int ChatPort)
{
    public const string DefaultProxyProtocolTrusted = "127.0.0.0/8;::1";

    /// <summary>Whether the HTTP, h2c and echo endpoints require a PROXY protocol header.</summary>
    public bool ProxyProtocol { get; init; }

    /// <summary>The proxies trusted to send the header.</summary>
    public IReadOnlyList<string> ProxyProtocolTrusted { get; init; } = DefaultProxyProtocolTrusted.Split(';');

    public const int DefaultChatPort = 5003;

    public bool ChatEnabled => ChatPort >= 0;

    public const int DefaultFilePort = -1;

    public bool FileEnabled => FilePort >= 0;

    public const string DefaultUrls = "http://localhost:5000";
    public const int DefaultEchoPort = 5001;
    public const int DefaultHttp2Port = -1;

    public bool EchoEnabled => EchoPort >= 0;

    public bool Http2Enabled => Http2Port >= 0;

    /// <summary><c>--ShutdownTimeout</c>; null keeps the host's own (HostOptions.ShutdownTimeout, 30 s).</summary>
    public TimeSpan? ShutdownTimeout { get; init; }

    /// <summary><c>--DrainDelay</c>; null for none.</summary>
    public TimeSpan? DrainDelay { get; init; }

    public static SampleSettings Read(IConfiguration configuration)
        => new(
            ReadTransport(configuration["Transport"]),
            ReadUrls(configuration),
            ReadPort(configuration, "EchoPort", DefaultEchoPort),
            ReadPort(configuration, "Http2Port", DefaultHttp2Port),
            ReadPort(configuration, "FilePort", DefaultFilePort),
            ReadFolder(configuration["Files"]),
            ReadPort(configuration, "ChatPort", DefaultChatPort))
        {
            ShutdownTimeout = ReadSeconds(configuration, "ShutdownTimeout", max: 3600),
            DrainDelay = ReadSeconds(configuration, "DrainDelay", max: 3600),
            ProxyProtocol = ReadProxyProtocol(configuration),
            ProxyProtocolTrusted = (configuration["ProxyProtocolTrusted"] is { Length: > 0 } trusted ? trusted : DefaultProxyProtocolTrusted)
                .Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
        };

    private static bool ReadProxyProtocol(IConfiguration configuration)
    {
        string? value = configuration["ProxyProtocol"];
        if (string.IsNullOrWhiteSpace(value))
        {
            return false;
        }

        if (!bool.TryParse(value.Trim(), out bool on))
        {
            throw new SampleConfigurationException($"--ProxyProtocol '{value}' is not true or false.");
        }

        if (on && ReadTransport(configuration["Transport"]) != SampleTransport.Epoll)
        {
            throw new SampleConfigurationException("--ProxyProtocol needs the epoll transport: only it reads PROXY protocol headers.");
        }

        return on;
    }

    /// <summary>With <c>--ProxyProtocol true</c>: <paramref name="options"/> requires a header from the trusted proxies.</summary>
    public void ApplyProxyProtocol(ListenOptions options)
    {
        if (ProxyProtocol)
        {
            options.UseProxyProtocol(o =>
            {
                foreach (string trusted in ProxyProtocolTrusted)
                {
                    o.TrustedProxies.Add(trusted);
                }
            });
        }
    }

    private static TimeSpan? ReadSeconds(IConfiguration configuration, string key, int max)
    {
        string? value = configuration[key];
        if (string.IsNullOrWhiteSpace(value))
        {
            return null;
        }

        if (!double.TryParse(value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || seconds is < 0 || seconds > max)
        {
            throw new SampleConfigurationException($"--{key} '{value}' is not a number of seconds from 0 to {max}.");
        }

        return TimeSpan.FromSeconds(seconds);
    }

    private static string? ReadFolder(string? value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return null;
        }

        string folder = Path.GetFullPath(value.Trim());
        return Directory.Exists(folder)
            ? folder
            : throw new SampleConfigurationException($"--Files '{value}' is not a folder.");
    }

    private static SampleTransport ReadTransport(string? value)
    {
        if (string.IsNullOrWhiteSpace(value) || string.Equals(value.Trim(), "epoll", StringComparison.OrdinalIgnoreCase))
        {
            return SampleTransport.Epoll;
        }

        if (string.Equals(value.Trim(), "sockets", StringComparison.OrdinalIgnoreCase))
        {
            return SampleTransport.Sockets;
        }

        throw new SampleConfigurationException($"unknown transport '{value}': use --Transport epoll or --Transport sockets.");
    }

    private static int ReadPort(IConfiguration configuration, string key, int defaultPort)
    {
        string? value = configuration[key];
        if (string.IsNullOrWhiteSpace(value))
        {
            return defaultPort;
        }

        if (!int.TryParse(value.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int port) || port > IPEndPoint.MaxPort)
        {
            throw new SampleConfigurationException($"--{key} '{value}' is not a port: use 1 to 65535, 0 for a free port, or a negative number to turn the endpoint off.");
        }

        return port;
    }

    private static List<BindingAddress> ReadUrls(IConfiguration configuration)
    {
        string? value = configuration[WebHostDefaults.ServerUrlsKey];
        if (string.IsNullOrWhiteSpace(value))
        {
            // As Kestrel: http_ports and https_ports (ASPNETCORE_HTTP_PORTS, as container images set) only without urls.
            value = string.Join(';', ExpandPorts(configuration[WebHostDefaults.HttpPortsKey], "http").Concat(ExpandPorts(configuration[WebHostDefaults.HttpsPortsKey], "https")));
        }

        if (string.IsNullOrWhiteSpace(value))
        {
            value = DefaultUrls;
        }

        var addresses = new List<BindingAddress>();
        foreach (string url in value.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            BindingAddress address;
            try
            {
                address = BindingAddress.Parse(url);
            }
            catch (FormatException e)
            {
                throw new SampleConfigurationException($"--urls '{url}' is not an address: {e.Message}");
            }

            if (!string.Equals(address.Scheme, "http", StringComparison.OrdinalIgnoreCase)
                && !string.Equals(address.Scheme, "https", StringComparison.OrdinalIgnoreCase))
            {
                throw new SampleConfigurationException($"--urls '{url}': the scheme must be http or https.");
            }

            if (!address.IsUnixPipe && address.Port is < 0 or > IPEndPoint.MaxPort)
            {
                throw new SampleConfigurationException($"--urls '{url}': the port must be 0 to 65535.");
            }

            addresses.Add(address);
        }

        if (addresses.Count == 0)
        {
            throw new SampleConfigurationException($"--urls '{value}' names no address.");
        }

        return addresses;
    }

    private static IEnumerable<string> ExpandPorts(string? ports, string scheme)
        => (ports ?? string.Empty).Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(port => $"{scheme}://*:{port}");

    /// <summary>True when every HTTP address is a loopback one (or a Unix socket): the sample then keeps its other
    /// ports on loopback too.</summary>
    public bool LoopbackOnly => Urls.All(static address => address.IsUnixPipe || IsLoopbackHost(address.Host.Trim('[', ']')));

    /// <summary>
    /// Adds a non-HTTP/1.1 endpoint (echo, files, h2c, chat) on <paramref name="port"/>: on both loopbacks when
    /// <see cref="LoopbackOnly"/> (IPv4 only for port 0, which Kestrel's localhost binding refuses), else on every
    /// interface.
    /// </summary>
    public void ListenRaw(KestrelServerOptions kestrel, int port, Action<ListenOptions> configure)
    {
        if (!LoopbackOnly)
        {
            kestrel.ListenAnyIP(port, configure);
        }
        else if (port == 0)
        {
            kestrel.Listen(IPAddress.Loopback, 0, configure);
        }
        else
        {
            kestrel.ListenLocalhost(port, configure);
        }
    }

    private static bool IsLoopbackHost(string host)
        => string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase) || (IPAddress.TryParse(host, out IPAddress? ip) && IPAddress.IsLoopback(ip));

    /// <summary>
    /// Adds one HTTP endpoint the way Kestrel reads <c>--urls</c>: <c>localhost</c> is both loopbacks, an IP address
    /// is that address, <c>unix:/path</c> a Unix socket, and any other host (<c>*</c>, <c>+</c>, a name) every interface.
    /// Kestrel ignores <c>--urls</c> once code calls <c>Listen*</c>, which the echo endpoint needs, so the sample does it.
    /// </summary>
    public static ListenOptions Listen(KestrelServerOptions kestrel, BindingAddress address, Action<ListenOptions>? configure = null)
    {
        ListenOptions? endpoint = null;
        bool https = string.Equals(address.Scheme, "https", StringComparison.OrdinalIgnoreCase);
        void Configure(ListenOptions options)
        {
            // With TLS, ALPN picks HTTP/1.1 or HTTP/2. Without it Kestrel serves only HTTP/1.1 on an Http1AndHttp2
            // endpoint (and warns at every start), so cleartext endpoints say Http1: h2c has its own port, Http2Port.
            if (https)
            {
                options.Protocols = HttpProtocols.Http1AndHttp2;
                options.UseHttps();
            }
            else
            {
                options.Protocols = HttpProtocols.Http1;
            }

            configure?.Invoke(options);
            endpoint = options;
        }

        string host = address.Host.Trim('[', ']');
        if (address.IsUnixPipe)
        {
            kestrel.ListenUnixSocket(address.UnixPipePath, Configure);
        }
        else if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            kestrel.ListenLocalhost(address.Port, Configure);
        }
        else if (IPAddress.TryParse(host, out IPAddress? ip))
        {
            kestrel.Listen(ip, address.Port, Configure);
        }
        else
        {
            kestrel.ListenAnyIP(address.Port, Configure);
        }

        return endpoint!;
    }
}

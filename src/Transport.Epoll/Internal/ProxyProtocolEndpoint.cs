using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Transport.Epoll.Internal;

/// <summary>
/// <see cref="ProxyProtocolOptions"/> checked and compiled for the accept path: the trusted proxies as networks, the
/// timeout in the loop's milliseconds. One per endpoint (or per configuration), shared by its connections.
/// </summary>
internal sealed class ProxyProtocolEndpoint
{
    internal static readonly TimeSpan MinHeaderTimeout = TimeSpan.FromMilliseconds(10);
    internal static readonly TimeSpan MaxHeaderTimeout = TimeSpan.FromMinutes(10);

    private readonly IPNetwork[] _trusted;

    private ProxyProtocolEndpoint(IPNetwork[] trusted, TimeSpan headerTimeout)
    {
        _trusted = trusted;
        HeaderTimeoutMs = (long)headerTimeout.TotalMilliseconds;
        TrustedText = string.Join(", ", trusted);
    }

    public long HeaderTimeoutMs { get; }

    /// <summary>The trusted networks, for logs.</summary>
    public string TrustedText { get; }

    /// <summary>Checks <paramref name="options"/>; throws <see cref="ArgumentException"/> naming what is wrong.</summary>
    public static ProxyProtocolEndpoint Create(ProxyProtocolOptions options, string name)
    {
        List<string> failures = Validate(options, name, checkPorts: false);
        if (failures.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", failures), nameof(options));
        }

        return new ProxyProtocolEndpoint(options.TrustedProxies.Select(t => TryParseNetwork(t)!.Value).ToArray(), options.HeaderTimeout);
    }

    /// <summary>What is wrong with <paramref name="options"/>, each message naming the option (<paramref name="name"/>)
    /// and what it allows.</summary>
    public static List<string> Validate(ProxyProtocolOptions options, string name, bool checkPorts)
    {
        var failures = new List<string>();
        if (options.HeaderTimeout < MinHeaderTimeout || options.HeaderTimeout > MaxHeaderTimeout)
        {
            failures.Add($"{name}.HeaderTimeout is {options.HeaderTimeout}; it must be between {MinHeaderTimeout} and {MaxHeaderTimeout}.");
        }

        for (int i = 0; i < options.TrustedProxies.Count; i++)
        {
            if (TryParseNetwork(options.TrustedProxies[i]) is null)
            {
                failures.Add($"{name}.TrustedProxies[{i}] is '{options.TrustedProxies[i]}'; it must be an IP address (127.0.0.1, ::1) or a CIDR range whose address has no bits past the prefix (10.0.0.0/8, fd00::/8).");
            }
        }

        if (checkPorts)
        {
            for (int i = 0; i < options.Ports.Count; i++)
            {
                if (options.Ports[i] is < 1 or > 65535)
                {
                    failures.Add($"{name}.Ports[{i}] is {options.Ports[i]}; it must be between 1 and 65535.");
                }
            }
        }

        if (options.TrustedProxies.Count == 0 && (!checkPorts || options.Ports.Count > 0))
        {
            failures.Add($"{name}.TrustedProxies is empty; it must name at least one proxy address or CIDR range (10.0.0.0/8), or every connection would be refused.");
        }

        return failures;
    }

    /// <summary>
    /// Whether <paramref name="remote"/> may send a header. Allocation-free for IPv4 and IPv6 peers; an IPv4 peer of a
    /// dual-stack socket arrives as ::ffff:a.b.c.d and is matched as IPv4.
    /// </summary>
    public bool IsTrusted(EndPoint? remote, bool unixSocket)
    {
        if (remote is not IPEndPoint ip)
        {
            // A Unix domain socket's peer (often unnamed) has no address to check: the socket file's permissions decide
            // who connects. A TCP peer without an address is refused.
            return unixSocket;
        }

        IPAddress address = ip.Address.IsIPv4MappedToIPv6 ? ip.Address.MapToIPv4() : ip.Address;
        foreach (IPNetwork network in _trusted)
        {
            if (network.Contains(address))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>"10.0.0.0/8", "::1", "127.0.0.1": IPv4 only as a dotted quad (IPAddress.Parse would take "10" too).</summary>
    private static IPNetwork? TryParseNetwork(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }

        text = text.Trim();
        int slash = text.IndexOf('/', StringComparison.Ordinal);
        string addressText = slash < 0 ? text : text[..slash];
        if (!addressText.Contains(':', StringComparison.Ordinal) && (addressText.Count(c => c == '.') != 3 || !addressText.All(c => c == '.' || char.IsAsciiDigit(c))))
        {
            return null;
        }

        if (addressText.Contains('%', StringComparison.Ordinal) || !IPAddress.TryParse(addressText, out IPAddress? address))
        {
            return null;
        }

        int maxPrefix = address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        if (slash < 0)
        {
            return new IPNetwork(address, maxPrefix);
        }

        // A range whose address has bits past its prefix ("10.0.0.1/8") is refused: it is a typo for a host or a range.
        return int.TryParse(text.AsSpan(slash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int prefix) && prefix <= maxPrefix
            && IPNetwork.TryParse(text, out IPNetwork network) && network.BaseAddress.Equals(address)
            ? network
            : null;
    }
}

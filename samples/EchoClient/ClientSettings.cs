using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace EchoClient;

/// <summary>A command-line value the client cannot use; the message says which and why.</summary>
internal sealed class ClientUsageException(string message) : Exception(message);

/// <summary>
/// The client's switches, <c>--Key value</c>: <c>Connect</c> (required: <c>host:port</c>, <c>[v6 address]:port</c>
/// or <c>unix:/path</c>), <c>Connections</c> (1), <c>Bytes</c> per message (64), <c>Seconds</c> measured (10),
/// <c>Warmup</c> seconds before that (2), <c>Threads</c>: event loops (1), <c>Inline</c>: run the ping-pong on the
/// loops (<c>UnsafePreferInlineScheduling</c>, false), <c>Spin</c>: <c>SpinBeforeWait</c> in microseconds (50).
/// </summary>
internal sealed record ClientSettings(EndPoint Target, int Connections, int Bytes, double Seconds, double Warmup, int Threads, bool Inline, int Spin)
{
    public const string Usage =
        "usage: EchoClient --Connect host:port|[::1]:port|unix:/path [--Connections 1] [--Bytes 64] [--Seconds 10] [--Warmup 2] [--Threads 1] [--Inline false] [--Spin 50]";

    public static ClientSettings Parse(string[] args)
    {
        var values = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 == args.Length)
            {
                throw new ClientUsageException($"'{args[i]}' is not a --Key value pair.");
            }

            values[args[i][2..]] = args[++i];
        }

        string[] known = ["Connect", "Connections", "Bytes", "Seconds", "Warmup", "Threads", "Inline", "Spin"];
        if (values.Keys.FirstOrDefault(k => !known.Contains(k, StringComparer.OrdinalIgnoreCase)) is { } unknown)
        {
            throw new ClientUsageException($"--{unknown} is not a switch of the client.");
        }

        if (!values.TryGetValue("Connect", out string? target))
        {
            throw new ClientUsageException("--Connect is required.");
        }

        return new ClientSettings(
            ParseTarget(target),
            Number(values, "Connections", 1, 1, 100_000),
            Number(values, "Bytes", 64, 1, 1 << 20),
            Number(values, "Seconds", 10, 1, 3600),
            Number(values, "Warmup", 2, 0, 600),
            Number(values, "Threads", 1, 1, 256),
            values.TryGetValue("Inline", out string? inline) && bool.Parse(inline),
            Number(values, "Spin", 50, 0, 1000));
    }

    /// <summary><c>unix:/path</c>, an IP address with a port (IPv6 in brackets), or a host name with a port.</summary>
    public static EndPoint ParseTarget(string value)
    {
        if (value.StartsWith("unix:", StringComparison.OrdinalIgnoreCase))
        {
            return new UnixDomainSocketEndPoint(value[5..]);
        }

        if (IPEndPoint.TryParse(value, out IPEndPoint? ip) && ip.Port != 0)
        {
            return ip;
        }

        int colon = value.LastIndexOf(':');
        if (colon > 0 && int.TryParse(value.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) && port is > 0 and < 65536)
        {
            return new DnsEndPoint(value[..colon], port);
        }

        throw new ClientUsageException($"--Connect '{value}' is not host:port, [v6 address]:port or unix:/path.");
    }

    private static int Number(Dictionary<string, string> values, string key, int fallback, int min, int max)
    {
        if (!values.TryGetValue(key, out string? text))
        {
            return fallback;
        }

        return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= min && value <= max
            ? value
            : throw new ClientUsageException($"--{key} '{text}' must be a whole number from {min} to {max}.");
    }
}

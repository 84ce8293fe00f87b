using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;

namespace Transport.Epoll.Hosting;

/// <summary>
/// Binds <see cref="EpollTransportOptions"/> from configuration, and first checks that every value it knows can be
/// read as its option's type: the binder alone reports <c>--Kestrel:Transport:Epoll:AcceptDistribution foo</c> as
/// "Failed to convert configuration value" with a stack trace, without the values that would have worked.
/// </summary>
internal static class EpollTransportOptionsBinder
{
    private static readonly Dictionary<string, (string Expected, Func<string, bool> CanRead)> s_readers = new(StringComparer.OrdinalIgnoreCase)
    {
        [nameof(EpollTransportOptions.ThreadCount)] = Integer(),
        [nameof(EpollTransportOptions.MaxReadBufferSize)] = Long(),
        [nameof(EpollTransportOptions.MaxWriteBufferSize)] = Long(),
        [nameof(EpollTransportOptions.NoDelay)] = Boolean(),
        [nameof(EpollTransportOptions.Backlog)] = Integer(),
        [nameof(EpollTransportOptions.AcceptDistribution)] = (
            "one of " + string.Join(", ", Enum.GetNames<EpollAcceptDistribution>()),
            static value => Enum.TryParse<EpollAcceptDistribution>(value, ignoreCase: true, out var parsed) && Enum.IsDefined(parsed)),
        [nameof(EpollTransportOptions.MaxPendingAccepts)] = Integer(),
        [nameof(EpollTransportOptions.AllowPortSharing)] = Boolean(),
        [nameof(EpollTransportOptions.UnsafePreferInlineScheduling)] = Boolean(),
        [nameof(EpollTransportOptions.SendOnFlushingThread)] = Boolean(),
        [nameof(EpollTransportOptions.EnableSendFile)] = Boolean(),
        [nameof(EpollTransportOptions.TcpNotSentLowWatermark)] = Integer(),
        [nameof(EpollTransportOptions.ZeroCopyThreshold)] = Integer(),
        [nameof(EpollTransportOptions.AllowHalfOpen)] = Boolean(),
        [nameof(EpollTransportOptions.IdleTimeout)] = Duration(),
        [nameof(EpollTransportOptions.TcpKeepAliveTime)] = Duration(),
        [nameof(EpollTransportOptions.TcpKeepAliveInterval)] = Duration(),
        [nameof(EpollTransportOptions.TcpKeepAliveProbeCount)] = Integer(),
        [nameof(EpollTransportOptions.TcpUserTimeout)] = Duration(),
        [nameof(EpollTransportOptions.LoopStallThreshold)] = Duration(),
        [nameof(EpollTransportOptions.SpinBeforeWait)] = Duration(),
        [nameof(EpollTransportOptions.ConnectTimeout)] = Duration(),
    };

    public static void Bind(IConfiguration section, EpollTransportOptions options)
    {
        foreach (IConfigurationSection child in section.GetChildren())
        {
            // An empty value leaves a nullable option unset, as the binder does; unknown keys are the binder's too.
            if (child.Value is { Length: > 0 } value && s_readers.TryGetValue(child.Key, out var reader) && !reader.CanRead(value.Trim()))
            {
                throw new OptionsValidationException(Options.DefaultName, typeof(EpollTransportOptions),
                    [$"{child.Path} is '{value}'; it must be {reader.Expected}."]);
            }
        }

        // ProxyProtocol is a section: its durations and ports are checked the same way (TrustedProxies are strings; the
        // validator checks that they parse).
        IConfigurationSection proxy = section.GetSection(nameof(EpollTransportOptions.ProxyProtocol));
        CheckValue(proxy.GetSection(nameof(ProxyProtocolOptions.HeaderTimeout)), Duration());
        foreach (IConfigurationSection port in proxy.GetSection(nameof(ProxyProtocolOptions.Ports)).GetChildren())
        {
            CheckValue(port, Integer());
        }

        section.Bind(options);
    }

    private static void CheckValue(IConfigurationSection child, (string Expected, Func<string, bool> CanRead) reader)
    {
        if (child.Value is { Length: > 0 } value && !reader.CanRead(value.Trim()))
        {
            throw new OptionsValidationException(Options.DefaultName, typeof(EpollTransportOptions),
                [$"{child.Path} is '{value}'; it must be {reader.Expected}."]);
        }
    }

    private static (string, Func<string, bool>) Integer()
        => ("a whole number", static value => int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out _));

    private static (string, Func<string, bool>) Long()
        => ("a whole number of bytes", static value => long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out _));

    private static (string, Func<string, bool>) Boolean()
        => ("true or false", static value => bool.TryParse(value, out _));

    private static (string, Func<string, bool>) Duration()
        => ("a duration such as 00:00:30 (hh:mm:ss)", static value => TimeSpan.TryParse(value, CultureInfo.InvariantCulture, out _));
}

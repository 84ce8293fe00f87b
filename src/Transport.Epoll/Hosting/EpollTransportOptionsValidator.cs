using Transport.Epoll.Internal;
using Microsoft.Extensions.Options;

namespace Transport.Epoll.Hosting;

/// <summary>Rejects nonsense options at start-up with a message that names the option and its allowed range.</summary>
internal sealed class EpollTransportOptionsValidator : IValidateOptions<EpollTransportOptions>
{
    internal const int MaxThreadCount = 256;
    internal const int MinZeroCopyThreshold = 1024;
    internal const int MaxZeroCopyThreshold = 1 << 30;
    internal static readonly TimeSpan MaxSpinBeforeWait = TimeSpan.FromMilliseconds(1);
    internal static readonly TimeSpan MinConnectTimeout = TimeSpan.FromMilliseconds(10);
    internal static readonly TimeSpan MaxConnectTimeout = TimeSpan.FromHours(1);

    public ValidateOptionsResult Validate(string? name, EpollTransportOptions options)
    {
        var failures = new List<string>();
        if (options.ThreadCount is < 1 or > MaxThreadCount)
        {
            failures.Add($"EpollTransportOptions.ThreadCount is {options.ThreadCount}; it must be between 1 and {MaxThreadCount}.");
        }

        if (options.MaxReadBufferSize < 0)
        {
            failures.Add($"EpollTransportOptions.MaxReadBufferSize is {options.MaxReadBufferSize}; it must be 0 or more (null or 0: no limit).");
        }

        if (options.MaxWriteBufferSize < 0)
        {
            failures.Add($"EpollTransportOptions.MaxWriteBufferSize is {options.MaxWriteBufferSize}; it must be 0 or more (null or 0: no limit).");
        }

        if (options.Backlog is < 1 or > 65535)
        {
            failures.Add($"EpollTransportOptions.Backlog is {options.Backlog}; it must be between 1 and 65535.");
        }

        if (options.MaxPendingAccepts is < 1 or > 1_000_000)
        {
            failures.Add($"EpollTransportOptions.MaxPendingAccepts is {options.MaxPendingAccepts}; it must be between 1 and 1000000.");
        }

        if (options.ZeroCopyThreshold is { } zeroCopy && zeroCopy != 0 && zeroCopy is < MinZeroCopyThreshold or > MaxZeroCopyThreshold)
        {
            failures.Add($"EpollTransportOptions.ZeroCopyThreshold is {zeroCopy}; it must be between {MinZeroCopyThreshold} and {MaxZeroCopyThreshold} bytes, or null or 0 for off.");
        }

        if (options.SpinBeforeWait < TimeSpan.Zero || options.SpinBeforeWait > MaxSpinBeforeWait)
        {
            failures.Add($"EpollTransportOptions.SpinBeforeWait is {options.SpinBeforeWait}; it must be between {TimeSpan.Zero} (off) and {MaxSpinBeforeWait}.");
        }

        if (options.ConnectTimeout < MinConnectTimeout || options.ConnectTimeout > MaxConnectTimeout)
        {
            failures.Add($"EpollTransportOptions.ConnectTimeout is {options.ConnectTimeout}; it must be between {MinConnectTimeout} and {MaxConnectTimeout}.");
        }

        if (!Enum.IsDefined(options.AcceptDistribution))
        {
            failures.Add($"EpollTransportOptions.AcceptDistribution is {(int)options.AcceptDistribution}; it must be ReusePort or Exclusive.");
        }

        CheckRange(failures, nameof(options.IdleTimeout), options.IdleTimeout, TimeSpan.FromMilliseconds(10), TimeSpan.FromHours(24));
        CheckRange(failures, nameof(options.TcpKeepAliveTime), options.TcpKeepAliveTime, TimeSpan.FromSeconds(1), TimeSpan.FromHours(24));
        CheckRange(failures, nameof(options.TcpKeepAliveInterval), options.TcpKeepAliveInterval, TimeSpan.FromSeconds(1), TimeSpan.FromHours(1));
        CheckRange(failures, nameof(options.TcpUserTimeout), options.TcpUserTimeout, TimeSpan.FromSeconds(1), TimeSpan.FromHours(24));
        if (options.LoopStallThreshold != TimeSpan.Zero)
        {
            CheckRange(failures, nameof(options.LoopStallThreshold), options.LoopStallThreshold, TimeSpan.FromMilliseconds(10), TimeSpan.FromHours(1));
        }
        if (options.TcpNotSentLowWatermark is < 0 or > 1 << 30)
        {
            failures.Add($"EpollTransportOptions.TcpNotSentLowWatermark is {options.TcpNotSentLowWatermark}; it must be between 1 and 2^30 bytes, or null or 0 for the kernel's setting.");
        }

        if (options.TcpKeepAliveProbeCount is < 1 or > 127)
        {
            failures.Add($"EpollTransportOptions.TcpKeepAliveProbeCount is {options.TcpKeepAliveProbeCount}; it must be between 1 and 127, or null for the kernel's default.");
        }

        failures.AddRange(ProxyProtocolEndpoint.Validate(options.ProxyProtocol, "EpollTransportOptions.ProxyProtocol", checkPorts: true));

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    private static void CheckRange(List<string> failures, string name, TimeSpan? value, TimeSpan min, TimeSpan max)
    {
        if (value is { } v && (v < min || v > max))
        {
            failures.Add($"EpollTransportOptions.{name} is {v}; it must be between {min} and {max}, or null for off.");
        }
    }
}

using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>The per-connection TCP options, set on each accepted socket (a setsockopt only for what is configured).</summary>
internal static class TcpOptions
{
    public static void Apply(int fd, EpollTransportOptions options)
    {
        // Failures are ignored on purpose: an option the kernel refuses leaves the connection usable as it is.
        if (options.NoDelay)
        {
            _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_NODELAY, 1);
        }

        if (options.TcpNotSentLowWatermark is > 0 and var lowWatermark)
        {
            _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_NOTSENT_LOWAT, lowWatermark);
        }

        if (options.TcpKeepAliveTime is { } idle)
        {
            _ = Libc.SetIntOption(fd, Libc.SOL_SOCKET, Libc.SO_KEEPALIVE, 1);
            _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPIDLE, Seconds(idle));
            if (options.TcpKeepAliveInterval is { } interval)
            {
                _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPINTVL, Seconds(interval));
            }

            if (options.TcpKeepAliveProbeCount is { } count)
            {
                _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPCNT, count);
            }
        }

        if (options.TcpUserTimeout is { } userTimeout)
        {
            _ = Libc.SetIntOption(fd, Libc.IPPROTO_TCP, Libc.TCP_USER_TIMEOUT, (int)Math.Min(int.MaxValue, userTimeout.TotalMilliseconds));
        }
    }

    private static int Seconds(TimeSpan value) => (int)Math.Clamp(Math.Ceiling(value.TotalSeconds), 1, int.MaxValue);
}

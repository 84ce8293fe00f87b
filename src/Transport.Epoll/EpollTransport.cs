using System.Diagnostics.CodeAnalysis;
using System.Runtime.Versioning;
using Transport.Epoll.Interop;

namespace Transport.Epoll;

/// <summary>Whether the epoll transport can run on this system (probed once), and the name of its meter.</summary>
public static class EpollTransport
{
    /// <summary>
    /// The name of the <see cref="System.Diagnostics.Metrics.Meter"/> with the transport's instruments (connections
    /// accepted, active and closed by reason, bytes, syscalls, sendfile and zero-copy figures): subscribe to it with a
    /// <see cref="System.Diagnostics.Metrics.MeterListener"/> or OpenTelemetry's <c>AddMeter</c>, or watch it with
    /// <c>dotnet-counters monitor --counters Transport.Epoll</c>.
    /// </summary>
    public const string MeterName = "Transport.Epoll";

    private static readonly string? s_unsupportedReason = Probe();

    /// <summary><see langword="true"/> when this system has epoll (Linux) and the transport can start.</summary>
    /// <remarks>
    /// A guard for the platform analyzer (CA1416): <c>if (EpollTransport.IsSupported) builder.WebHost.UseEpollTransport();</c>
    /// builds without a warning in an app that targets every platform.
    /// </remarks>
    [MemberNotNullWhen(false, nameof(UnsupportedReason))]
    [SupportedOSPlatformGuard("linux")]
    public static bool IsSupported => s_unsupportedReason is null;

    /// <summary>Why the transport cannot run here, or <see langword="null"/> when it can.</summary>
    public static string? UnsupportedReason => s_unsupportedReason;

    internal static void ThrowIfUnsupported()
    {
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("The epoll transport cannot run here: " + UnsupportedReason);
        }
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
        {
            return $"epoll is a Linux API and this is {System.Runtime.InteropServices.RuntimeInformation.OSDescription}. Use Kestrel's default Sockets transport on this system.";
        }

        if (!Environment.Is64BitProcess)
        {
            // The interop's structs (off_t, iovec, statx) and the loops' counters, read from other threads with plain
            // 64-bit loads, are written for 64-bit processes (x86-64, arm64).
            return "the epoll transport runs in 64-bit processes only (x86-64, arm64); this process is 32-bit.";
        }

        // Create and close one epoll instance: a kernel without epoll (or a sandbox that forbids it) fails here,
        // not in the middle of start-up.
        int epfd = Libc.epoll_create1(Libc.EPOLL_CLOEXEC);
        if (epfd < 0)
        {
            return "epoll_create1 failed: " + Errno.Describe(Errno.Last);
        }

        _ = Libc.close(epfd);
        return null;
    }
}

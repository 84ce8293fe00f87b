using System.Diagnostics.CodeAnalysis;
using Transport.Epoll.Interop;

namespace Transport.Epoll;

/// <summary>Whether the epoll transport can run on this system, probed once.</summary>
public static class EpollTransport
{
    private static readonly string? s_unsupportedReason = Probe();

    /// <summary><see langword="true"/> when this system has epoll (Linux) and the transport can start.</summary>
    [MemberNotNullWhen(false, nameof(UnsupportedReason))]
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

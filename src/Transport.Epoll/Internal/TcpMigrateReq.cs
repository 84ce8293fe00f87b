namespace Transport.Epoll.Internal;

/// <summary>
/// Reads <c>net.ipv4.tcp_migrate_req</c> (Linux 5.14+; it applies to IPv6 too), which decides what closing one
/// listener of a <c>SO_REUSEPORT</c> group does to the connections the kernel already tied to it. From the kernel's
/// Documentation/networking/ip-sysctl.rst: a connection is tied to one listening socket when its SYN arrives; when
/// that listener is closed, request sockets still in the handshake and established sockets in its accept queue are
/// aborted, unless this is 1, which migrates them to another listener of the same group after close() or shutdown().
/// The value is per network namespace, so it is read from this process's view of /proc, at the moment it matters.
/// </summary>
internal static class TcpMigrateReq
{
    private const string Path = "/proc/sys/net/ipv4/tcp_migrate_req";

    /// <summary>True when the kernel will migrate a closed listener's queued connections; false when it will reset
    /// them (0, or a kernel older than 5.14 without the setting).</summary>
    public static bool IsEnabled()
    {
        try
        {
            return File.ReadAllText(Path).Trim() == "1";
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }
}

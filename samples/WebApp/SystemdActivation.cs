using System.Globalization;

namespace WebApp;

/// <summary>
/// systemd socket activation (sd_listen_fds(3)): systemd opens the listening sockets and starts the service with them
/// as fds 3, 4, ..., with LISTEN_FDS set to their count and LISTEN_PID to the pid they are meant for (a child that
/// inherits the environment must not take them). Kestrel's <c>UseSystemd()</c> does the same check and listens on
/// them with <c>ListenHandle</c>; the epoll transport makes each fd close-on-exec when it adopts it.
/// </summary>
internal static class SystemdActivation
{
    /// <summary>The number of listening fds passed to this process; 0 when not socket-activated.</summary>
    public static int ListenFdCount { get; } = Read();

    private static int Read()
    {
        string? pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        string? fds = Environment.GetEnvironmentVariable("LISTEN_FDS");
        return pid == Environment.ProcessId.ToString(CultureInfo.InvariantCulture)
            && int.TryParse(fds, NumberStyles.None, CultureInfo.InvariantCulture, out int count) && count > 0
            ? count
            : 0;
    }
}

using System.Runtime.InteropServices;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>The few libc calls the reliability tests need that the library's own interop does not have.</summary>
internal static unsafe partial class Native
{
    public const int RLIMIT_NOFILE = 7;
    public const int SIGPIPE = 13;
    public const nint SIG_DFL = 0;
    public const nint SIG_IGN = 1;
    private const int _SC_CLK_TCK = 2;

    [StructLayout(LayoutKind.Sequential)]
    public struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    /// <summary>Clock ticks per second: the unit of utime and stime in /proc/PID/stat.</summary>
    public static long ClockTicksPerSecond { get; } = sysconf(_SC_CLK_TCK) is > 0 and var ticks ? ticks : 100;

    [LibraryImport("libc", SetLastError = true)]
    private static partial long sysconf(int name);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrlimit(int resource, RLimit* limit);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setrlimit(int resource, RLimit* limit);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int prlimit(int pid, int resource, RLimit* newLimit, RLimit* oldLimit);

    /// <summary>Sets another process's RLIMIT_NOFILE, soft and hard (prlimit(2); lowering needs no privilege for a child).</summary>
    public static void SetFdLimit(int pid, ulong limit)
    {
        var value = new RLimit { Current = limit, Maximum = limit };
        if (prlimit(pid, RLIMIT_NOFILE, &value, null) != 0)
        {
            throw new InvalidOperationException($"prlimit({pid}, RLIMIT_NOFILE, {limit}) failed: errno {Marshal.GetLastPInvokeError()}.");
        }
    }

    public const int SIGTERM = 15;

    /// <summary>kill(2): sends <paramref name="signal"/> to a process (SIGTERM: what systemd and docker stop with).</summary>
    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    /// <summary>signal(2): sets the disposition of <paramref name="signal"/>; returns the previous one.</summary>
    [LibraryImport("libc", EntryPoint = "signal", SetLastError = true)]
    public static partial nint SetSignalHandler(int signal, nint handler);

    public static RLimit GetFdLimit()
    {
        RLimit limit;
        if (getrlimit(RLIMIT_NOFILE, &limit) != 0)
        {
            throw new InvalidOperationException($"getrlimit(RLIMIT_NOFILE) failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        return limit;
    }

    /// <summary>
    /// Makes sure this process may open <paramref name="needed"/> fds: raises the soft RLIMIT_NOFILE up to the hard one
    /// when it is lower (the runtime usually did at start-up already). Returns the soft limit in force.
    /// </summary>
    public static ulong EnsureFdLimit(ulong needed)
    {
        RLimit limit = GetFdLimit();
        if (limit.Current >= needed)
        {
            return limit.Current;
        }

        var raised = new RLimit { Current = Math.Min(limit.Maximum, Math.Max(needed, limit.Current)), Maximum = limit.Maximum };
        if (setrlimit(RLIMIT_NOFILE, &raised) != 0)
        {
            throw new InvalidOperationException($"setrlimit(RLIMIT_NOFILE, {raised.Current}) failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        return GetFdLimit().Current;
    }

    /// <summary>Whether <paramref name="signal"/> is ignored by this process (SigIgn in /proc/self/status).</summary>
    public static bool IsSignalIgnored(int signal)
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        ulong mask = Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16);
        return (mask & (1UL << (signal - 1))) != 0;
    }
}

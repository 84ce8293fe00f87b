using System.Globalization;
namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>What /proc says about this process: open fds, thread names, and the sockets listening on a port.</summary>
public static class ProcessInfo
{
    /// <summary>How many file descriptors the process has open.</summary>
    public static int OpenFdCount() => Directory.GetFiles("/proc/self/fd").Length;

    /// <summary>How many of the process's open fds are sockets (their /proc/self/fd link reads "socket:[inode]").</summary>
    public static int OpenSocketCount() => OpenFds().Values.Count(target => target.StartsWith("socket:", StringComparison.Ordinal));

    /// <summary>Every open fd and what it is.</summary>
    public static Dictionary<int, string> OpenFds()
    {
        var fds = new Dictionary<int, string>();
        foreach (string path in Directory.GetFiles("/proc/self/fd"))
        {
            int fd = int.Parse(Path.GetFileName(path), System.Globalization.CultureInfo.InvariantCulture);
            fds[fd] = DescribeFd(fd) ?? "?";
        }

        return fds;
    }

    /// <summary>What is open now that was not in <paramref name="before"/>, for failure messages.</summary>
    public static string DescribeNewFds(Dictionary<int, string> before)
    {
        var now = OpenFds();
        var added = now.Where(kv => !before.TryGetValue(kv.Key, out string? was) || was != kv.Value)
            .Select(kv => $"{kv.Key}->{kv.Value}").ToList();
        return added.Count == 0 ? "(none)" : string.Join(", ", added.Take(40));
    }

    /// <summary>Whether <paramref name="fd"/> is open, and what it is ("socket:[1234]", a path, ...).</summary>
    public static string? DescribeFd(long fd)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Names of all threads of the process (from /proc/self/task/*/comm, at most 15 characters each).</summary>
    public static IReadOnlyList<string> ThreadNames()
    {
        var names = new List<string>();
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                names.Add(File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n'));
            }
            catch (IOException)
            {
                // The thread exited while we listed them.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return names;
    }

    /// <summary>The names of the epoll transport's loop threads (<c>epoll-N</c>) alive now, sorted.</summary>
    public static IReadOnlyList<string> EpollThreadNames() =>
        ThreadNames().Where(n => n.StartsWith("epoll-", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();

    /// <summary>Reads the third ("max") value of a tcp_rmem / tcp_wmem style sysctl.</summary>
    public static long TcpBufferMax(string name)
    {
        string text = File.ReadAllText($"/proc/sys/net/ipv4/{name}");
        return long.Parse(text.Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries)[2], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Inodes of the IPv4 sockets listening on <paramref name="port"/> (/proc/net/tcp, state 0A).</summary>
    public static List<string> ListeningSocketInodes(int port)
    {
        var inodes = new List<string>();
        foreach (string line in File.ReadLines("/proc/net/tcp").Skip(1))
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 9 && f[3] == "0A" && int.Parse(f[1][(f[1].IndexOf(':', StringComparison.Ordinal) + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port)
            {
                inodes.Add(f[9]);
            }
        }

        return inodes;
    }
}

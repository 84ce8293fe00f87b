using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// A real HAProxy (the Debian package; .ci/run installs it) in TCP mode on free loopback ports, started in the
/// foreground with a generated configuration: one frontend per backend, each relaying to its server with
/// <c>send-proxy</c> (v1) or <c>send-proxy-v2</c>. Disposing stops it. Not finding it fails the test: PROXY protocol
/// interoperability is not optional.
/// </summary>
public sealed class Haproxy : IAsyncDisposable
{
    private readonly ChildProcess _process;
    private readonly string _config;

    private Haproxy(ChildProcess process, string config, IReadOnlyDictionary<string, IPEndPoint> frontends)
    {
        _process = process;
        _config = config;
        Frontends = frontends;
    }

    /// <summary>Where to connect for each named backend.</summary>
    public IReadOnlyDictionary<string, IPEndPoint> Frontends { get; }

    public static string Binary =>
        new[] { "/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/bin/haproxy" }.FirstOrDefault(File.Exists)
        ?? throw new InvalidOperationException("HAProxy is not installed: apt-get install haproxy (.ci/run installs it when it is missing).");

    /// <summary>A backend: <paramref name="Name"/> relays to <paramref name="Server"/>; <paramref name="ProxyLine"/> is
    /// <c>send-proxy</c> or <c>send-proxy-v2</c> (with options such as <c>proxy-v2-options crc32c,unique-id</c>).</summary>
    public sealed record Backend(string Name, IPEndPoint Server, string ProxyLine);

    public static async Task<Haproxy> StartAsync(IEnumerable<Backend> backends, ITestOutputHelper? output = null)
    {
        var frontends = new Dictionary<string, IPEndPoint>();
        var config = new StringBuilder("""
            global
                maxconn 1024
            defaults
                mode tcp
                timeout connect 5s
                timeout client 30s
                timeout server 30s
                # No retries or health checks: every connection the tests make is one the server sees.
                retries 0
            
            """);
        foreach (Backend backend in backends)
        {
            var frontend = new IPEndPoint(IPAddress.Loopback, FreePort());
            frontends[backend.Name] = frontend;
            config.Append(System.Globalization.CultureInfo.InvariantCulture, $"""
                frontend f_{backend.Name}
                    bind {frontend}
                    default_backend b_{backend.Name}
                backend b_{backend.Name}
                    server s {backend.Server} {backend.ProxyLine}

                """);
        }

        string path = Path.Combine(Path.GetTempPath(), $"haproxy-{Environment.ProcessId}-{Guid.NewGuid():N}.cfg");
        await File.WriteAllTextAsync(path, config.ToString());

        // -db: stay in the foreground (the test owns the process); -W is not used, so there is no master to outlive us.
        var psi = new ProcessStartInfo(Binary) { ArgumentList = { "-db", "-f", path } };
        var process = ChildProcess.Start(psi, output, "[haproxy] ");
        var haproxy = new Haproxy(process, path, frontends);
        try
        {
            foreach (IPEndPoint frontend in frontends.Values)
            {
                Assert.True(await Poll.UntilAsync(() => IsListening(frontend) || process.HasExited), $"HAProxy did not listen on {frontend}: {process.Tail()}");
                Assert.False(process.HasExited, $"HAProxy exited: {process.Tail()}\n{config}");
            }
        }
        catch
        {
            await haproxy.DisposeAsync();
            throw;
        }

        return haproxy;
    }

    public async ValueTask DisposeAsync()
    {
        await _process.KillAsync();
        File.Delete(_config);
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static bool IsListening(IPEndPoint endPoint)
    {
        // /proc/net/tcp lists listening sockets (state 0A) with address:port in hex, without connecting to them (a
        // probe connection would reach the server behind HAProxy and count as one of the test's).
        string port = endPoint.Port.ToString("X4", System.Globalization.CultureInfo.InvariantCulture);
        return File.ReadLines("/proc/net/tcp").Skip(1).Any(line =>
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return fields.Length > 3 && fields[1].EndsWith(":" + port, StringComparison.Ordinal) && fields[3] == "0A";
        });
    }
}

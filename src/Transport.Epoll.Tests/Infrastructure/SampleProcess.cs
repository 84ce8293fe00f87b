using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// The sample (samples/WebApp) as a child process on 127.0.0.1, HTTP and raw echo on ports the kernel picks. For what
/// is per process: fault injection (<c>TRANSPORT_EPOLL_FAULTS</c> is read once, at start-up) and fd limits. The test
/// project builds the sample (a ProjectReference without the assembly), so it is found next to the sources, in the
/// configuration the tests were built in. Disposing kills the process, then fails when the process logged an error or a
/// crash (a <c>fail:</c> or <c>crit:</c> line, the runtime's report of an unhandled exception) that the test did not
/// declare with <see cref="Expect"/>.
/// </summary>
public sealed partial class SampleProcess : IAsyncDisposable
{
    private readonly ChildProcess _process;
    private readonly ConcurrentQueue<(Func<string, bool> Matches, string Why)> _expected = new();

    private SampleProcess(ChildProcess process)
    {
        _process = process;
    }

    public int Pid => _process.Id;

    public int HttpPort { get; private set; }

    public int EchoPort { get; private set; }

    /// <summary>The h2c (HTTP/2 prior knowledge) port with <c>--Http2Port</c>; -1 when off.</summary>
    public int Http2Port { get; private set; }

    public Uri BaseAddress => new($"http://127.0.0.1:{HttpPort}/");

    public IPEndPoint HttpEndPoint => new(IPAddress.Loopback, HttpPort);

    /// <summary>The echo endpoint, on loopback like the HTTP one (the sample keeps its raw ports where HTTP listens).</summary>
    public IPEndPoint EchoEndPoint => new(IPAddress.Loopback, EchoPort);

    /// <summary>The chat port (ChatConnectionHandler), -1 when off.</summary>
    public int ChatPort { get; private set; } = -1;

    public IPEndPoint ChatEndPoint => new(IPAddress.Loopback, ChatPort);

    public bool HasExited => _process.HasExited;

    /// <summary>Everything the process printed so far (stdout and stderr), one entry per line.</summary>
    public IReadOnlyCollection<string> Lines => _process.Lines;

    /// <summary>Lines that report an error or a crash (the console logger's <c>fail:</c> and <c>crit:</c>, one line per entry here).</summary>
    public IReadOnlyList<string> Failures => Lines.Where(IsFailure).ToList();

    /// <summary>Failures no <see cref="Expect"/> explains.</summary>
    public IReadOnlyList<string> UnexpectedFailures => Lines.Where(l => IsFailure(l) && !_expected.Any(x => x.Matches(l))).ToList();

    /// <summary>Declares error lines the test provokes on purpose; narrow (category, event id, exception), with the reason.</summary>
    public void Expect(Func<string, bool> matches, string why) => _expected.Enqueue((matches, why));

    /// <summary>Throws when the process logged an error or a crash the test did not declare.</summary>
    public void AssertNoUnexpectedFailures(string? context = null)
    {
        var unexpected = UnexpectedFailures;
        if (unexpected.Count > 0)
        {
            throw new UnexpectedLogException(
                $"{context}{(context is null ? "" : ": ")}the sample logged {unexpected.Count} error(s) the test did not expect (declare provoked ones with Expect):\n" +
                string.Join('\n', unexpected.Take(5)));
        }
    }

    /// <summary>The last lines the process printed, for failure messages.</summary>
    public string Tail(int count = 30) => _process.Tail(count);

    /// <summary>
    /// Starts the sample on the epoll transport (or <paramref name="transport"/>). <paramref name="faults"/> goes to
    /// <c>TRANSPORT_EPOLL_FAULTS</c> (none when null); <paramref name="wrap"/> may change how it is started (a shell
    /// around it). Returns once the sample printed its start line with the bound ports.
    /// </summary>
    public static async Task<SampleProcess> StartAsync(string? faults = null, ITestOutputHelper? output = null, IEnumerable<string>? extraArgs = null, IReadOnlyDictionary<string, string>? environment = null, Action<ProcessStartInfo>? wrap = null, string transport = "epoll")
    {
        string dll = Repository.SampleDll;
        var psi = DotnetCli.StartInfo(Path.GetDirectoryName(dll)!, [dll, "--urls", "http://127.0.0.1:0", "--EchoPort", "0", "--ChatPort", "0", "--Transport", transport, .. extraArgs ?? []]);
        psi.Environment.Remove("TRANSPORT_EPOLL_FAULTS");
        if (faults is not null)
        {
            psi.Environment["TRANSPORT_EPOLL_FAULTS"] = faults;
        }

        // Quiet (warnings and up: the transport's abnormal events), plain lines, a workstation GC: a light child.
        psi.Environment["Logging__LogLevel__Default"] = "Warning";
        psi.Environment["Logging__Console__FormatterName"] = "simple";
        psi.Environment["Logging__Console__FormatterOptions__SingleLine"] = "true";
        psi.Environment["Logging__Console__FormatterOptions__ColorBehavior"] = "Disabled";
        psi.Environment["DOTNET_gcServer"] = "0";
        psi.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[name] = value;
        }

        wrap?.Invoke(psi);
        var sample = new SampleProcess(ChildProcess.Start(psi, output, "[sample] "));
        try
        {
            string line = await sample._process.WaitForStartLineAsync(StartLine().IsMatch, "The sample");
            var match = StartLine().Match(line);
            sample.HttpPort = int.Parse(match.Groups["http"].Value, CultureInfo.InvariantCulture);
            sample.EchoPort = int.Parse(match.Groups["echo"].Value, CultureInfo.InvariantCulture);
            sample.Http2Port = match.Groups["h2c"].Success ? int.Parse(match.Groups["h2c"].Value, CultureInfo.InvariantCulture) : -1;
            if (match.Groups["chat"].Success)
            {
                sample.ChatPort = int.Parse(match.Groups["chat"].Value, CultureInfo.InvariantCulture);
            }
            return sample;
        }
        catch
        {
            await sample._process.KillAsync();
            throw;
        }
    }

    /// <summary>Completes with the first line (printed from now or earlier) that contains <paramref name="text"/>.</summary>
    public Task<string> WaitForLineAsync(string text, TimeSpan? timeout = null) =>
        _process.WaitForLineAsync(line => line.Contains(text, StringComparison.Ordinal), timeout ?? Timeouts.Default);

    /// <summary>CPU time (user + system) the process has used so far, from /proc/PID/stat.</summary>
    public TimeSpan CpuTime()
    {
        string stat = File.ReadAllText($"/proc/{Pid}/stat");

        // The command name (field 2) is in parentheses and may hold spaces: count fields after its ')'.
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds((double)ticks / Native.ClockTicksPerSecond);
    }

    /// <summary>
    /// Lowers the process's fd limit (soft and hard, so the runtime cannot raise it again) to what it has open now plus
    /// <paramref name="headroom"/>; returns the limit. Measured rather than fixed: the runtime alone holds a couple of
    /// hundred fds (two per loaded assembly), and that number moves with the runtime's version.
    /// </summary>
    public int LimitFds(int headroom)
    {
        int limit = OpenFdCount() + headroom;
        Native.SetFdLimit(Pid, (ulong)limit);
        return limit;
    }

    /// <summary>Waits for the sample to exit by itself (after a SIGTERM); its exit code. Throws on timeout.</summary>
    public Task<int> WaitForExitAsync(TimeSpan timeout) => _process.WaitForExitAsync(timeout, "The sample");

    /// <summary>Open fds of the process now.</summary>
    public int OpenFdCount() => Directory.GetFiles($"/proc/{Pid}/fd").Length;

    public async ValueTask DisposeAsync()
    {
        await _process.KillAsync();
        AssertNoUnexpectedFailures();
    }

    private static bool IsFailure(string line) =>
        line.StartsWith("fail:", StringComparison.Ordinal)
        || line.StartsWith("crit:", StringComparison.Ordinal)
        || line.StartsWith("Unhandled exception.", StringComparison.Ordinal)
        || line.StartsWith("Process terminated.", StringComparison.Ordinal);

    [GeneratedRegex(@"^WebApp: transport=\w+ http=http://127\.0\.0\.1:(?<http>\d+) echo=tcp://\S+:(?<echo>\d+) h2c=(?:off|http://\S+:(?<h2c>\d+))(?:.* chat=tcp://\S+:(?<chat>\d+))?")]
    private static partial Regex StartLine();
}

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Reflection;
using System.Text.RegularExpressions;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

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
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly TaskCompletionSource<string> _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<(string Text, TaskCompletionSource<string> Seen)> _watches = [];
    private readonly Lock _lock = new();
    private readonly ITestOutputHelper? _output;
    private readonly ConcurrentQueue<(Func<string, bool> Matches, string Why)> _expected = new();

    private SampleProcess(Process process, ITestOutputHelper? output)
    {
        _process = process;
        _output = output;
    }

    public int Pid => _process.Id;

    public int HttpPort { get; private set; }

    public int EchoPort { get; private set; }

    public Uri BaseAddress => new($"http://127.0.0.1:{HttpPort}/");

    public IPEndPoint HttpEndPoint => new(IPAddress.Loopback, HttpPort);

    /// <summary>The echo endpoint, on loopback like the HTTP one (the sample keeps its raw ports where HTTP listens).</summary>
    public IPEndPoint EchoEndPoint => new(IPAddress.Loopback, EchoPort);

    public bool HasExited => _process.HasExited;

    /// <summary>Everything the process printed so far (stdout and stderr), one entry per line.</summary>
    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>Lines that report an error or a crash (the console logger's <c>fail:</c> and <c>crit:</c>, one line per entry here).</summary>
    public IReadOnlyList<string> Failures => _lines.Where(IsFailure).ToList();

    /// <summary>Failures no <see cref="Expect"/> explains.</summary>
    public IReadOnlyList<string> UnexpectedFailures => _lines.Where(l => IsFailure(l) && !_expected.Any(x => x.Matches(l))).ToList();

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
    public string Tail(int count = 30) => string.Join('\n', _lines.TakeLast(count));

    /// <summary>
    /// Starts the sample on the epoll transport. <paramref name="faults"/> goes to <c>TRANSPORT_EPOLL_FAULTS</c> (none
    /// when null). Returns once the sample printed its start line with the bound ports.
    /// </summary>
    public static async Task<SampleProcess> StartAsync(string? faults = null, ITestOutputHelper? output = null, IEnumerable<string>? extraArgs = null, IReadOnlyDictionary<string, string>? environment = null)
    {
        string dll = FindSampleDll();
        var psi = new ProcessStartInfo
        {
            FileName = DotnetHost(),
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(dll)!,
        };

        psi.ArgumentList.Add(dll);
        foreach (string arg in (string[])["--urls", "http://127.0.0.1:0", "--EchoPort", "0", "--Transport", "epoll"])
        {
            psi.ArgumentList.Add(arg);
        }

        foreach (string arg in extraArgs ?? [])
        {
            psi.ArgumentList.Add(arg);
        }

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

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var sample = new SampleProcess(process, output);
        process.OutputDataReceived += (_, e) => sample.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => sample.OnLine(e.Data);
        if (!process.Start())
        {
            throw new InvalidOperationException($"Could not start {psi.FileName}.");
        }

        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            var exited = process.WaitForExitAsync();
            var first = await Task.WhenAny(sample._started.Task, exited).WaitAsync(Timeouts.Bulk);
            if (first != sample._started.Task)
            {
                throw new InvalidOperationException($"The sample exited with {process.ExitCode} before it started:\n{sample.Tail()}");
            }

            string line = await sample._started.Task;
            var match = StartLine().Match(line);
            sample.HttpPort = int.Parse(match.Groups["http"].Value, CultureInfo.InvariantCulture);
            sample.EchoPort = int.Parse(match.Groups["echo"].Value, CultureInfo.InvariantCulture);
            return sample;
        }
        catch (TimeoutException)
        {
            await sample.KillAsync();
            throw new TimeoutException($"The sample printed no start line within {Timeouts.Bulk}:\n{sample.Tail()}");
        }
        catch
        {
            await sample.KillAsync();
            throw;
        }
    }

    /// <summary>Completes with the first line (printed from now or earlier) that contains <paramref name="text"/>.</summary>
    public Task<string> WaitForLineAsync(string text, TimeSpan? timeout = null)
    {
        var seen = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            string? already = _lines.FirstOrDefault(l => l.Contains(text, StringComparison.Ordinal));
            if (already is not null)
            {
                return Task.FromResult(already);
            }

            _watches.Add((text, seen));
        }

        return seen.Task.WaitAsync(timeout ?? Timeouts.Default);
    }

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

    /// <summary>Open fds of the process now.</summary>
    public int OpenFdCount() => Directory.GetFiles($"/proc/{Pid}/fd").Length;

    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        AssertNoUnexpectedFailures();
    }

    private async Task KillAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            await _process.WaitForExitAsync().WaitAsync(Timeouts.Default);
        }
        catch (InvalidOperationException)
        {
            // Never started, or already gone.
        }
        finally
        {
            _process.Dispose();
        }
    }

    private static bool IsFailure(string line) =>
        line.StartsWith("fail:", StringComparison.Ordinal)
        || line.StartsWith("crit:", StringComparison.Ordinal)
        || line.StartsWith("Unhandled exception.", StringComparison.Ordinal)
        || line.StartsWith("Process terminated.", StringComparison.Ordinal);

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_lock)
        {
            _lines.Enqueue(line);
            for (int i = _watches.Count - 1; i >= 0; i--)
            {
                if (line.Contains(_watches[i].Text, StringComparison.Ordinal))
                {
                    _watches[i].Seen.TrySetResult(line);
                    _watches.RemoveAt(i);
                }
            }
        }

        if (StartLine().IsMatch(line))
        {
            _started.TrySetResult(line);
        }

        try
        {
            _output?.WriteLine("[sample] " + line);
        }
        catch (InvalidOperationException)
        {
            // The test already finished.
        }
    }

    /// <summary>samples/WebApp/bin/&lt;configuration&gt;/net10.0/WebApp.dll, found upward from the test's binaries.</summary>
    internal static string FindSampleDll()
    {
        string configuration = typeof(SampleProcess).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";
        string framework = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Name;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "samples", "WebApp", "bin", configuration, framework, "WebApp.dll");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException(
            $"samples/WebApp/bin/{configuration}/{framework}/WebApp.dll not found above {AppContext.BaseDirectory}: the test project's " +
            "ProjectReference to samples/WebApp builds it; build the tests (or the solution) in that configuration.");
    }

    /// <summary>The dotnet host that runs the tests (the SDK sets DOTNET_HOST_PATH), else the one next to the runtime, else PATH's.</summary>
    internal static string DotnetHost()
    {
        if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host))
        {
            return host;
        }

        // .../dotnet/shared/Microsoft.NETCore.App/<version>/ -> .../dotnet/dotnet
        string runtime = System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory();
        string candidate = Path.GetFullPath(Path.Combine(runtime, "..", "..", "..", "dotnet"));
        return File.Exists(candidate) ? candidate : "dotnet";
    }

    [GeneratedRegex(@"^WebApp: transport=epoll http=http://127\.0\.0\.1:(?<http>\d+) echo=tcp://\S+:(?<echo>\d+)")]
    private static partial Regex StartLine();
}

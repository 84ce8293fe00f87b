using System.Collections.Concurrent;
using System.Diagnostics;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// A child process whose stdout and stderr are read line by line: every line is kept, echoed to the test's output
/// with a prefix, and offered to the waits of <see cref="WaitForLineAsync"/>. Disposing kills the process tree, so
/// nothing outlives the test. The one place the tests start, watch and end processes (the sample, a packed app, the
/// dotnet command line, the python3 clients of the broadcast test).
/// </summary>
public sealed class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ITestOutputHelper? _output;
    private readonly string _prefix;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly List<(Func<string, bool> Matches, TaskCompletionSource<string> Seen)> _watches = [];
    private readonly Lock _lock = new();
    private bool _ended;

    private ChildProcess(Process process, ITestOutputHelper? output, string prefix)
    {
        _process = process;
        _output = output;
        _prefix = prefix;
    }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>Everything the process printed so far (stdout and stderr, interleaved by line).</summary>
    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>Starts <paramref name="startInfo"/> with both streams redirected; lines go to <paramref name="output"/> as "<paramref name="prefix"/>line".</summary>
    public static ChildProcess Start(ProcessStartInfo startInfo, ITestOutputHelper? output = null, string prefix = "")
    {
        startInfo.RedirectStandardOutput = true;
        startInfo.RedirectStandardError = true;
        startInfo.UseShellExecute = false;
        var child = new ChildProcess(new Process { StartInfo = startInfo, EnableRaisingEvents = true }, output, prefix);
        child._process.OutputDataReceived += (_, e) => child.OnLine(e.Data);
        child._process.ErrorDataReceived += (_, e) => child.OnLine(e.Data);
        if (!child._process.Start())
        {
            child._process.Dispose();
            throw new InvalidOperationException($"Could not start {startInfo.FileName}.");
        }

        child._process.BeginOutputReadLine();
        child._process.BeginErrorReadLine();
        return child;
    }

    /// <summary>
    /// Writes <paramref name="line"/> to the process's stdin and flushes it: for processes the test talks to (the
    /// caller set <see cref="ProcessStartInfo.RedirectStandardInput"/> before <see cref="Start"/>).
    /// </summary>
    public async Task WriteLineAsync(string line)
    {
        await _process.StandardInput.WriteLineAsync(line);
        await _process.StandardInput.FlushAsync();
    }

    /// <summary>The last lines the process printed, for failure messages.</summary>
    public string Tail(int count = 30) => string.Join('\n', _lines.TakeLast(count));

    /// <summary>Completes with the first line (printed from now or earlier) that <paramref name="matches"/>; throws <see cref="TimeoutException"/> after <paramref name="timeout"/>.</summary>
    public Task<string> WaitForLineAsync(Func<string, bool> matches, TimeSpan timeout)
    {
        var seen = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            string? already = _lines.FirstOrDefault(matches);
            if (already is not null)
            {
                return Task.FromResult(already);
            }

            _watches.Add((matches, seen));
        }

        return seen.Task.WaitAsync(timeout);
    }

    /// <summary>
    /// Waits (<see cref="Timeouts.Bulk"/>) for the line by which the process says it is up, and returns it; throws when
    /// the process exits first or stays silent, with its last lines. The caller disposes the process either way.
    /// </summary>
    public async Task<string> WaitForStartLineAsync(Func<string, bool> matches, string what)
    {
        var started = WaitForLineAsync(matches, Timeouts.Bulk);
        try
        {
            var first = await Task.WhenAny(started, _process.WaitForExitAsync());
            if (first != started)
            {
                throw new InvalidOperationException($"{what} exited with {_process.ExitCode} before it started:\n{Tail()}");
            }

            return await started;
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"{what} printed no start line within {Timeouts.Bulk}:\n{Tail()}");
        }
    }

    /// <summary>
    /// Waits for the process to exit and returns its exit code; kills the process tree and throws
    /// <see cref="TimeoutException"/> (with everything it printed) when it outlives <paramref name="timeout"/>.
    /// </summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout, string what)
    {
        try
        {
            // Also waits for the redirected streams to close, so Lines is complete after it.
            await _process.WaitForExitAsync().WaitAsync(timeout);
            return _process.ExitCode;
        }
        catch (TimeoutException)
        {
            await KillAsync();
            throw new TimeoutException($"{what} ran longer than {timeout.TotalSeconds:0} s:\n{string.Join('\n', _lines)}");
        }
    }

    /// <summary>Kills the process tree (when it still runs) and waits for it; idempotent.</summary>
    public async Task KillAsync()
    {
        if (_ended)
        {
            return;
        }

        _ended = true;
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
            // Already gone.
        }
        finally
        {
            _process.Dispose();
        }
    }

    public async ValueTask DisposeAsync() => await KillAsync();

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
                if (_watches[i].Matches(line))
                {
                    _watches[i].Seen.TrySetResult(line);
                    _watches.RemoveAt(i);
                }
            }
        }

        try
        {
            _output?.WriteLine(_prefix + line);
        }
        catch (InvalidOperationException)
        {
            // The test already finished.
        }
    }
}

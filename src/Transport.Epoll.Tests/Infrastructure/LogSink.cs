using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>One line a server logged.</summary>
public sealed record LogEntry(LogLevel Level, string Category, EventId EventId, string Message, Exception? Exception)
{
    /// <summary>An error or a crash: what a production server alerts on.</summary>
    public bool IsFailure => Level >= LogLevel.Error;

    public override string ToString() =>
        $"[{Level}] {Category}({EventId.Id}{(EventId.Name is { } name ? ":" + name : "")}): {Message}{(Exception is null ? "" : " " + Exception)}";
}

/// <summary>
/// Keeps what a server logs (warnings and up) and echoes it to the test's output when there is one. An error or a
/// crash the test did not declare with <see cref="Expect"/> fails the test: <see cref="TestServer"/> calls
/// <see cref="AssertNoUnexpectedFailures"/> when it is disposed, so no test can forget to look.
/// </summary>
public sealed class LogSink(ITestOutputHelper? output) : ILoggerProvider
{
    private readonly ConcurrentQueue<LogEntry> _entries = new();
    private readonly ConcurrentQueue<(Func<LogEntry, bool> Matches, string Why)> _expected = new();

    public IReadOnlyCollection<LogEntry> Entries => _entries;

    /// <summary>Errors and crashes no <see cref="Expect"/> explains.</summary>
    public IReadOnlyList<LogEntry> UnexpectedFailures =>
        _entries.Where(e => e.IsFailure && !_expected.Any(x => x.Matches(e))).ToList();

    /// <summary>
    /// Declares errors the test provokes on purpose (a handler that throws, a start-up that must fail). Keep it
    /// narrow: match the category and event id, and the exception's type where there is one. <paramref name="why"/>
    /// says what provokes it (it is printed when the entry is seen).
    /// </summary>
    public void Expect(Func<LogEntry, bool> matches, string why) => _expected.Enqueue((matches, why));

    /// <summary><see cref="Expect"/> for one event of one category (the category's name, or its end).</summary>
    public void Expect(string category, int eventId, string why) =>
        Expect(e => e.EventId.Id == eventId && (e.Category == category || e.Category.EndsWith("." + category, StringComparison.Ordinal)), why);

    /// <summary>Throws when the server logged an error or a crash that the test did not declare.</summary>
    public void AssertNoUnexpectedFailures()
    {
        var unexpected = UnexpectedFailures;
        if (unexpected.Count > 0)
        {
            throw new UnexpectedLogException(
                $"The server logged {unexpected.Count} error(s) the test did not expect (declare provoked ones with Logs.Expect):\n" +
                string.Join('\n', unexpected.Take(5)));
        }
    }

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose()
    {
    }

    private void Add(LogEntry entry)
    {
        _entries.Enqueue(entry);
        try
        {
            string? why = entry.IsFailure ? _expected.FirstOrDefault(x => x.Matches(entry)).Why : null;
            output?.WriteLine(why is null ? entry.ToString() : $"{entry} (expected: {why})");
        }
        catch (InvalidOperationException)
        {
            // The test already finished; the entry stays in Entries.
        }
    }

    private sealed class Logger(LogSink sink, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                sink.Add(new LogEntry(logLevel, category, eventId, formatter(state, exception), exception));
            }
        }
    }
}

/// <summary>A server logged an error or a crash its test did not declare.</summary>
public sealed class UnexpectedLogException(string message) : Exception(message);

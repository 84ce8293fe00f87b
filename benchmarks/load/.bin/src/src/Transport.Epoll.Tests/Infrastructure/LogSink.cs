using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Keeps what the server logs (warnings and up) and echoes it to the test's output when there is one.</summary>
public sealed class LogSink(ITestOutputHelper? output) : ILoggerProvider
{
    private readonly ConcurrentQueue<string> _entries = new();

    public IReadOnlyCollection<string> Entries => _entries;

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose()
    {
    }

    private void Add(string entry)
    {
        _entries.Enqueue(entry);
        try
        {
            output?.WriteLine(entry);
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
                sink.Add($"[{logLevel}] {category}({eventId.Id}): {formatter(state, exception)}{(exception is null ? "" : " " + exception)}");
            }
        }
    }
}

using Microsoft.Extensions.Logging;

namespace Transport.Epoll.Internal;

/// <summary>
/// The transport's logger. The transport logs on its loop threads, often from inside the catch that handles a failed
/// connection; a logging provider that throws there (a full disk, a broken sink; Microsoft.Extensions.Logging collects
/// providers' exceptions and rethrows them as one AggregateException) would take the loop thread, and with it the
/// process, down. So a log call that fails is dropped: losing a line costs less than losing the server.
/// </summary>
internal sealed class NonThrowingLogger(ILogger inner) : ILogger
{
    private int _failures;

    /// <summary>Log calls that threw and were dropped.</summary>
    public int Failures => Volatile.Read(ref _failures);

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull
    {
        try
        {
            return inner.BeginScope(state);
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _failures);
            return null;
        }
    }

    public bool IsEnabled(LogLevel logLevel)
    {
        try
        {
            return inner.IsEnabled(logLevel);
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _failures);
            return false;
        }
    }

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        try
        {
            inner.Log(logLevel, eventId, state, exception, formatter);
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _failures);
        }
    }
}

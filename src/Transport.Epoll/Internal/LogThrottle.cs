namespace Transport.Epoll.Internal;

/// <summary>
/// Lets a warning that a remote peer can provoke at will through at most once per interval, from any thread, and
/// counts what it held back: a flood of refused connections must not become a flood of log lines (the log's disk and
/// the logging pipeline's CPU are shared with everyone else). The counter beside each such warning still counts every
/// occurrence.
/// </summary>
internal sealed class LogThrottle(TimeSpan interval)
{
    private readonly long _intervalMs = (long)interval.TotalMilliseconds;
    private long _nextAllowedMs = long.MinValue;
    private long _heldBack;

    /// <summary>
    /// True when this occurrence is to be logged; then <paramref name="heldBack"/> is how many occurrences were not
    /// logged since the previous one that was.
    /// </summary>
    public bool TryEnter(out long heldBack)
    {
        long now = Environment.TickCount64;
        long next = Volatile.Read(ref _nextAllowedMs);
        if (now >= next && Interlocked.CompareExchange(ref _nextAllowedMs, now + _intervalMs, next) == next)
        {
            heldBack = Interlocked.Exchange(ref _heldBack, 0);
            return true;
        }

        Interlocked.Increment(ref _heldBack);
        heldBack = 0;
        return false;
    }
}

namespace Transport.Epoll.Internal;

/// <summary>
/// One-shot timers run on the loop's own thread, folded into epoll_wait's timeout. They serve the rare paths (an
/// accept back-off, the drain bound of a disposed connection), and need no thread or fd of their own: the accept
/// back-off happens precisely when the process has no fd left to start a timer thread with.
/// </summary>
internal sealed partial class EpollLoop
{
    private readonly PriorityQueue<TimerEntry, long> _timers = new();

    /// <summary>Runs <paramref name="action"/> on this loop after <paramref name="delayMs"/>. Loop thread only.</summary>
    public void RunAfter(long delayMs, Action<object?> action, object? state)
    {
        System.Diagnostics.Debug.Assert(IsCurrentThread);
        _timers.Enqueue(new TimerEntry(action, state), Environment.TickCount64 + delayMs);
    }

    /// <summary>epoll_wait's timeout: until the earlier of the next timer and the next idle check, or forever.</summary>
    private int NextWaitTimeout()
    {
        int timeout = IdleWaitTimeout();
        if (_timers.TryPeek(out _, out long due))
        {
            long wait = Math.Max(0, due - Environment.TickCount64);
            int timerTimeout = (int)Math.Min(wait, int.MaxValue);
            timeout = timeout < 0 ? timerTimeout : Math.Min(timeout, timerTimeout);
        }

        return timeout;
    }

    private void RunDueTimers()
    {
        long now = Environment.TickCount64;
        while (_timers.TryPeek(out TimerEntry entry, out long due) && due <= now)
        {
            _timers.Dequeue();
            RunWork(entry.Action, entry.State);
        }
    }

    private readonly record struct TimerEntry(Action<object?> Action, object? State);
}

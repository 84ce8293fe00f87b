using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// Waking the loop from other threads with its eventfd, and closing that eventfd safely when the loop stops.
/// </summary>
internal sealed unsafe partial class EpollLoop
{
    // The wake-up flag (netty's scheme): Schedule writes the eventfd only when the loop may be blocked in epoll_wait.
    // Closed: the eventfd is gone; a waker that won the flag before it was closed skips its write (see Wake).
    private const int Awake = 0;
    private const int Sleeping = 1;
    private const int Woken = 2;
    private const int Closed = 3;

    private void Wake()
    {
        if (Interlocked.CompareExchange(ref _wakeState, Woken, Sleeping) != Sleeping)
        {
            return;
        }

        // The winner may be preempted here for a long time, and meanwhile the loop may stop and close the eventfd,
        // whose number the kernel then hands to the next open: a late write would land in a stranger's file. So it
        // announces its write first and looks at the state again; the loop publishes Closed first and then waits for
        // announced writes (CloseWakeUp). Both sides use full fences, so one of them sees the other. Only winners pay,
        // and they make a syscall anyway.
        Interlocked.Increment(ref _wakeWritesInFlight);
        try
        {
            if (Volatile.Read(ref _wakeState) != Closed)
            {
                WriteEventFd();
            }
        }
        finally
        {
            Interlocked.Decrement(ref _wakeWritesInFlight);
        }
    }

    private void WriteEventFd()
    {
        while (Libc.SignalEventFd(_eventFd) < 0)
        {
            Error error = Errno.Last;
            if (error == Error.EINTR)
            {
                continue;
            }

            if (error == Error.EAGAIN)
            {
                // The counter is at its maximum: drain it and write again (eventfd(2), "overflow").
                ulong drained;
                _ = Libc.read(_eventFd, &drained, sizeof(ulong));
                continue;
            }

            EpollLog.WakeUpFailed(_logger, Index, error.ToString());
            return;
        }
    }

    /// <summary>Closes the eventfd once no waker is writing to it (netty's loop cleanup waits the same way): a write
    /// that lands after close(2) would go to whatever the kernel gave the number next.</summary>
    private void CloseWakeUp()
    {
        Interlocked.Exchange(ref _wakeState, Closed);
        SpinWait spin = default;
        while (Volatile.Read(ref _wakeWritesInFlight) != 0)
        {
            // A waker preempted inside its write needs a core to finish: spin, then yield and sleep.
            spin.SpinOnce();
        }

        _ = Libc.close(_eventFd);
    }
}

using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// Stopping the loop: its handlers are told, its fds close, and work that arrives afterwards still runs.
/// </summary>
internal sealed unsafe partial class EpollLoop
{
    /// <summary>True once the loop has stopped serving: its handlers were told, its epoll fd is closed, and work still
    /// scheduled runs as late work on the scheduling thread.</summary>
    public bool HasStopped => Volatile.Read(ref _terminated) != 0;

    /// <summary>Stops the loop: registered handlers are told, the thread exits, the epoll fd and eventfd are closed.</summary>
    public Task StopAsync()
    {
        if ((_thread.ThreadState & System.Threading.ThreadState.Unstarted) != 0)
        {
            // Never started (a sibling loop failed to start): nothing runs, just release the fds.
            if (_stopped.TrySetResult())
            {
                Volatile.Write(ref _wakeState, Closed);
                Interlocked.Exchange(ref _terminated, 1);
                WriteScratch.Dispose();
                _ = Libc.close(_eventFd);
                CloseEpoll();
                Context.Metrics.RemoveLoop(Counters);
                Context.Metrics.RemoveLoop(FlusherCounters);
                Context.ReleaseMemoryPool(MemoryPool);
            }

            return _stopped.Task;
        }

        _stopRequested = true;
        Wake();
        return _stopped.Task;
    }

    public void Dispose() => StopAsync().GetAwaiter().GetResult();

    /// <summary>Closes the epoll instance. Its number becomes -1 first: late work that still calls epoll_ctl gets EBADF
    /// instead of changing the interest list of whatever the kernel gives the number to next.</summary>
    private void CloseEpoll()
    {
        int fd = _epollFd;
        Volatile.Write(ref _epollFd, -1);
        _ = Libc.close(fd);
    }

    /// <summary>After the loop stopped: runs the queued work on this thread, as the loop would, one caller at a time.</summary>
    private void RunLateWork()
    {
        lock (_lateWorkLock)
        {
            EpollLoop? previous = t_current;
            t_current = this;
            try
            {
                while (_work.TryDequeue(out Work work))
                {
                    RunWork(work.Action, work.State);
                }
            }
            finally
            {
                t_current = previous;
            }
        }
    }

    private void StopHandlers()
    {
        foreach (IEpollHandler handler in Table.Snapshot())
        {
            if (handler.Loop == this)
            {
                try
                {
                    handler.OnLoopStopping();
                }
                catch (Exception ex)
                {
                    EpollLog.HandlerFailed(_logger, Index, handler.Id, ex);
                }
            }
        }
    }
}

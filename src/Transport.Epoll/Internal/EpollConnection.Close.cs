using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// How a connection ends. The fd is closed, on the loop, when both directions are done: the receive side (peer FIN,
/// or the application completed its input) and the send side (every byte sent and SHUT_WR, or the application gone).
/// A reset, a socket error, an abort or the loop stopping close it at once. <c>ConnectionClosed</c> fires exactly
/// once, on the thread pool, never on the loop: at the peer's FIN (unless AllowHalfOpen) or when the fd closes.
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>How long DisposeAsync lets buffered output drain to a slow peer before it aborts the connection.</summary>
    private static readonly TimeSpan s_disposeDrainTimeout = TimeSpan.FromSeconds(5);

    private static readonly Action<object?> s_abortOnLoop = static state =>
    {
        var (connection, reason) = ((EpollConnection, ConnectionAbortedException))state!;
        connection.AbortOnLoop(reason, EpollCloseReason.Aborted);
    };

    private static readonly Action<object?> s_disposeOnLoop = static state => ((EpollConnection)state!).DisposeOnLoop();

    private readonly CancellationTokenSource _connectionClosedTokenSource = new();
    /// <summary>Completes when both <see cref="CloseStep"/>s happened: the fd is closed and ConnectionClosed's callbacks
    /// returned. One task for both (each is waited on only after the fd closed): one object less per connection. Made
    /// when first needed, at the close (<see cref="ClosedAndCallbacksDone"/>): an idle connection does not carry it.</summary>
    private TaskCompletionSource? _closedAndCallbacksDone;
    private int _closeSteps;
    private EpollCloseReason _closeReason;
    private Exception? _closeError;
    private int _connectionClosedFired;

    [Flags]
    private enum CloseStep
    {
        FdClosed = 1,
        ConnectionClosedCallbacksDone = 2,
        All = FdClosed | ConnectionClosedCallbacksDone,
    }

    public override CancellationToken ConnectionClosed
    {
        get => _connectionClosedTokenSource.Token;
        set => throw new NotSupportedException("The transport owns the ConnectionClosed token.");
    }

    public EpollCloseReason CloseReason => Volatile.Read(ref _fd) < 0 ? _closeReason : EpollCloseReason.None;

    public Exception? CloseError => _closeError;

    /// <summary>Drops pending data and resets the connection (the peer gets a RST), from any thread.</summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        // Kestrel passes null when it aborts a connection whose client went away.
        abortReason ??= new ConnectionAbortedException("The connection was aborted by the application.");

        // Always handed to the loop, even from the loop itself: the caller may be the application running inline
        // inside this connection's read, which must unwind before the fd goes away.
        Loop.Schedule(s_abortOnLoop, (this, abortReason));
    }

    public override async ValueTask DisposeAsync()
    {
        // Complete the application's ends of the original pipes (middleware may have replaced Transport).
        await OriginalTransport.Input.CompleteAsync().ConfigureAwait(false);
        await OriginalTransport.Output.CompleteAsync().ConfigureAwait(false);
        Loop.Schedule(s_disposeOnLoop, this);

        // The loop closes the fd once the buffered output is sent, and aborts if that takes longer than the drain
        // timeout (see DisposeOnLoop), so this wait is bounded without a timer per connection. A loop that stopped
        // closed its connections as it stopped. Closing the fd queued the ConnectionClosed cancellation on the thread
        // pool: its callbacks must also have run before the token source goes away, or they would be lost (Cancel on
        // a disposed source throws and runs nothing).
        await ClosedAndCallbacksDone.Task.ConfigureAwait(false);

        _connectionClosedTokenSource.Dispose();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    public void OnLoopStopping()
        => AbortOnLoop(new ConnectionAbortedException("The epoll transport is shutting down."), EpollCloseReason.TransportShutdown);

    /// <summary>No successful read or write for IdleTimeout: close with a FIN (nothing is pending to drop).</summary>
    public void CloseIdle()
    {
        var reason = new ConnectionAbortedException($"The connection saw no read or write for {_context.Options.IdleTimeout}.");
        SetCloseReason(EpollCloseReason.IdleTimeout, reason, overrideGraceful: true);
        CompleteInput(reason);
        CompleteOutput(null);
        CloseFd();
    }

    /// <summary>
    /// Work of this connection threw on the loop (a bug): close the connection, so nobody reads from or waits on it
    /// forever, and let the loop serve the others. The caller has logged the exception.
    /// </summary>
    public void CloseAfterBug(Exception ex)
    {
        try
        {
            AbortOnLoop(new ConnectionAbortedException("The epoll transport failed on this connection.", ex), EpollCloseReason.Error);
        }
        catch (Exception)
        {
            // The abort path itself failed (the bug may sit in it): close what must close, each step on its own.
            CloseAfterFailedAbort(ex);
        }
    }

    /// <summary>The last resort: the fd closes (with a RST), the pipes complete, DisposeAsync and ConnectionClosed are
    /// answered, whatever state the connection was left in.</summary>
    private void CloseAfterFailedAbort(Exception bug)
    {
        var reason = new ConnectionAbortedException("The epoll transport failed on this connection.", bug);
        int fd = _fd;
        if (fd >= 0)
        {
            _flushingThread?.ShutNow();
            IgnoreFailure(static (c, _) => c.ForgetAddressing(), reason);
            Loop.Table.Remove(Id);
            Loop.RemoveConnection(this);
            Volatile.Write(ref _fd, -1);
            _ = Libc.SetLingerZero(fd);
            _ = Libc.close(fd);
            AbandonProxyHeader();
            _closeReason = EpollCloseReason.Error;
            _closeError = reason;
            _context.Metrics.ConnectionClosed(_closeReason, Direction);
        }

        _receiveState = ReceiveState.Done;
        _sendState = SendState.Done;
        IgnoreFailure(static (c, e) => c._input.Writer.Complete(e), reason);
        IgnoreFailure(static (c, _) => c._output.Reader.Complete(), reason);
        FireConnectionClosed();
        Done(CloseStep.FdClosed);
    }

    private void IgnoreFailure(Action<EpollConnection, Exception> step, Exception reason)
    {
        try
        {
            step(this, reason);
        }
        catch (Exception)
        {
            // Nothing more to do for a step that fails here; the others still run.
        }
    }

    private void DisposeOnLoop()
    {
        if (_fd < 0)
        {
            return;
        }

        // The application is gone: nothing more will be read. What it wrote still goes out before the close.
        CompleteInput(null);
        TryCloseAfterBothSidesDone();
        if (_fd >= 0)
        {
            // Output still buffered for a slow or absent reader: give it a bounded time (rare, so a timer here
            // costs nothing on the common path).
            Loop.RunAfter((long)s_disposeDrainTimeout.TotalMilliseconds, static state =>
            {
                var c = (EpollConnection)state!;
                if (c._fd >= 0)
                {
                    EpollLog.DisposeDrainTimedOut(c._logger, c.ConnectionId, (int)s_disposeDrainTimeout.TotalSeconds);
                    c.AbortOnLoop(new ConnectionAbortedException("The connection was disposed with output the peer did not take."), EpollCloseReason.Aborted);
                }
            }, this);
        }
    }

    private void AbortOnLoop(ConnectionAbortedException reason, EpollCloseReason closeReason)
    {
        if (_fd < 0)
        {
            return;
        }

        long unsent = closeReason is EpollCloseReason.Aborted or EpollCloseReason.TransportShutdown ? UnsentOutputBytes() + (_byId?.QueuedBytes ?? 0) : 0;
        if (unsent > 0)
        {
            // Bytes the application wrote are about to be dropped: say so, so an aborted response is never lost
            // silently (during a shutdown past Kestrel's timeout, for example).
            EpollLog.AbortedWithUnsentOutput(_logger, ConnectionId, unsent, reason.Message);
        }
        else if (closeReason == EpollCloseReason.Aborted)
        {
            EpollLog.ConnectionAborted(_logger, ConnectionId, reason.Message);
        }

        // SO_LINGER {1, 0}: close(2) discards unsent data and sends a RST (socket(7)).
        _ = Libc.SetLingerZero(_fd);

        // An abort that answers the peer's own FIN (Kestrel aborts HTTP connections whose client left) keeps
        // PeerClosed: the peer closed first. An abort after our own graceful end does replace LocalClose.
        SetCloseReason(closeReason, reason, overrideGraceful: _closeReason != EpollCloseReason.PeerClosed);
        CompleteInput(reason);
        CompleteOutput(null);
        CloseFd();
    }

    /// <summary>What the application flushed that the kernel has not taken yet (on the loop, which owns the reader).</summary>
    private long UnsentOutputBytes()
    {
        ShutOutFlushers();
        System.IO.Pipelines.ReadResult result;
        try
        {
            if (SendDone || _outputReadPending || !_output.Reader.TryRead(out result))
            {
                return 0;
            }
        }
        catch (Exception)
        {
            // The application completed its output with an error (TryRead rethrows it, whatever its type): there is
            // nothing countable to report, and the abort must go on.
            return 0;
        }

        // Bytes held for zero-copy completions at the front were sent already. Nothing is consumed, and the examined
        // position stays where the last send left it: a pipe refuses to move it back, and the send side may have
        // examined past the held bytes.
        long length = _positions.UnsentIn(result.Buffer);
        _output.Reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        return length;
    }

    /// <summary>A read or write failed: the peer is gone (reset) or the socket broke. Pending sends are abandoned.</summary>
    private void OnSocketError(Error error)
    {
        Exception exception;
        if (Errno.IsPeerGone(error))
        {
            EpollLog.ConnectionReset(_logger, ConnectionId);
            exception = new ConnectionResetException($"The peer reset the connection ({Errno.Describe(error)}).");
            SetCloseReason(EpollCloseReason.PeerReset, exception, overrideGraceful: true);
        }
        else if (Errno.IsTimedOut(error))
        {
            // Reported to the application like a reset (it is the same to it: the peer is gone, nothing more will
            // arrive), with its own close reason and message.
            EpollLog.ConnectionTimedOut(_logger, ConnectionId);
            exception = new ConnectionResetException($"The peer stopped acknowledging; the kernel gave up on it ({Errno.Describe(error)}).");
            SetCloseReason(EpollCloseReason.TimedOut, exception, overrideGraceful: true);
        }
        else
        {
            EpollLog.ConnectionError(_logger, ConnectionId, Errno.Describe(error));
            exception = new IOException("Socket error " + Errno.Describe(error));
            SetCloseReason(EpollCloseReason.Error, exception, overrideGraceful: true);
        }

        CompleteInput(exception);
        CompleteOutput(null);
        CloseFd();
    }

    /// <summary>The first reason wins, except that a failure replaces a graceful reason recorded before it.</summary>
    private void SetCloseReason(EpollCloseReason reason, Exception? error, bool overrideGraceful = false)
    {
        bool graceful = _closeReason is EpollCloseReason.PeerClosed or EpollCloseReason.LocalClose;
        if (_closeReason == EpollCloseReason.None || (overrideGraceful && graceful))
        {
            _closeReason = reason;
            _closeError = error;
        }
    }

    private void TryCloseAfterBothSidesDone()
    {
        // DisposeAsync completes the input first, so "nobody will read any more" is covered by the receive side's Done.
        if (_fd >= 0 && SendDone && InputDone)
        {
            CloseFd();
        }
    }

    private void CloseFd()
    {
        int fd = _fd;
        if (fd < 0)
        {
            return;
        }

        // Order matters: the table forgets the id first, so an event still queued in this turn is dropped; then the
        // fd goes (closing it also removes it from the epoll set, epoll(7)); the kernel may hand the number to the
        // very next accept.
        if (_closeReason == EpollCloseReason.None)
        {
            _closeReason = EpollCloseReason.LocalClose;
        }

        // A flushing thread inside sendmsg would write to whatever socket gets this number next.
        ShutOutFlushers();
        Loop.Table.Remove(Id);

        // Before the fd is marked closed: once a caller sees it closed, writes and broadcasts by id refuse it too.
        ForgetAddressing();
        Loop.RemoveConnection(this);
        Volatile.Write(ref _fd, -1);
        _ = Libc.close(fd);
        AbandonProxyHeader();

        if (!InputDone)
        {
            CompleteInput(null);
        }

        if (!SendDone)
        {
            CompleteOutput(null);
        }

        _files?.Abandon();

        _context.Metrics.ConnectionClosed(_closeReason, Direction);
        EpollLog.ConnectionClosed(_logger, ConnectionId, _closeReason);
        FireConnectionClosed();
        Done(CloseStep.FdClosed);
    }

    private void FireConnectionClosed()
    {
        if (Interlocked.Exchange(ref _connectionClosedFired, 1) != 0)
        {
            return;
        }

        // Off the loop: user callbacks registered on the token must never run on (or block) the I/O thread.
        ThreadPool.UnsafeQueueUserWorkItem(static state =>
        {
            try
            {
                state._connectionClosedTokenSource.Cancel();
            }
            catch (AggregateException ex)
            {
                // A user callback threw: report it, never let it take down the thread pool thread (the process).
                EpollLog.ConnectionClosedCallbackFailed(state._logger, state.ConnectionId, ex);
            }
            finally
            {
                // A callback that throws must not keep DisposeAsync waiting (Cancel rethrows callbacks' exceptions).
                state.Done(CloseStep.ConnectionClosedCallbacksDone);
            }
        }, this, preferLocal: false);
    }

    private void Done(CloseStep step)
    {
        int before = Interlocked.Or(ref _closeSteps, (int)step);
        if ((before | (int)step) == (int)CloseStep.All && before != (int)CloseStep.All)
        {
            ClosedAndCallbacksDone.TrySetResult();
        }
    }

    /// <summary><see cref="_closedAndCallbacksDone"/>, made by whichever thread asks for it first (the loop
    /// closing, DisposeAsync, the thread pool after ConnectionClosed's callbacks): all of them get the same one.</summary>
    private TaskCompletionSource ClosedAndCallbacksDone
        => LazyInitializer.EnsureInitialized(
            ref _closedAndCallbacksDone,
            static () => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
}

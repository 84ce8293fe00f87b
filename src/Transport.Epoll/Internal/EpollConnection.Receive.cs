using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

internal sealed partial class EpollConnection
{
    /// <summary>
    /// Reads per event before the loop moves on to other connections: one busy peer cannot starve the rest of its
    /// loop. A connection that still has input after its budget reads again next turn. 4 reads of
    /// <see cref="EpollLoop.ReceiveBufferSize"/> are 64 KiB per turn.
    /// </summary>
    private const int ReadsPerTurn = 4;

    /// <summary>Made at the first paused flush: most connections never fill MaxReadBufferSize (idle ones count).</summary>
    private Action? _onFlushCompleted;
    // Kept in a field because its continuation is the loop-scheduled _onFlushCompleted; consumed exactly once there.
#pragma warning disable CA2012
    private ValueTask<FlushResult> _flushTask;
    private bool _readable;
    private bool _finOrErrorPending;
    private bool _readAgainQueued;

#pragma warning restore CA2012

    private bool CanReceive => _receiveState == ReceiveState.Reading && _fd >= 0;

    /// <summary>Next turn after a budget ran out (see <see cref="EpollLoop.ReadAgainNextTurn"/>).</summary>
    public void ReadAgain()
    {
        _readAgainQueued = false;
        if (CanReceive && _readable)
        {
            Receive();
        }
    }

    private unsafe void Receive()
    {
        PipeWriter writer = _input.Writer;
        int budget = ReadsPerTurn;
        while (_readable && CanReceive)
        {
            if (budget-- == 0)
            {
                if (!_readAgainQueued)
                {
                    _readAgainQueued = true;
                    Loop.ReadAgainNextTurn(this);
                }

                return;
            }

            // Into the loop's buffer, then copied into the pipe: the pipe takes a block from the pool only for bytes that
            // arrived, so a read that finds nothing (EAGAIN after a read that filled the buffer, or an edge whose bytes
            // an earlier read already took) leaves no block rented, and an idle connection holds none. Sockets gets
            // the same with a zero-byte read first. The copy is cheap beside the syscall, and one read takes up to
            // ReceiveBufferSize bytes instead of what is left of one pool block.
            byte* buffer = Loop.ReceiveBuffer;
            nint received = Libc.ReadSocket(_fd, buffer, EpollLoop.ReceiveBufferSize);

            LoopCounters counters = Loop.Counters;
            counters.Reads++;

            if (received > 0)
            {
                // A short read drained the socket: on Linux every new segment raises a new edge, so there is no
                // need to read again only to see EAGAIN (one syscall saved per request).
                if (received < EpollLoop.ReceiveBufferSize && !_finOrErrorPending)
                {
                    _readable = false;
                    RearmIfFaultInjected();
                }

                counters.BytesReceived += received;
                _lastActivity = Loop.Now;
                var data = new ReadOnlySpan<byte>(buffer, (int)received);
                if (_proxyHeader is { Pending: true } && (!ReceiveProxyHeader(ref data) || data.IsEmpty))
                {
                    // Closed (an invalid header), or every byte so far was header: nothing for the application.
                    continue;
                }

                writer.Write(data);
#pragma warning disable CA2012 // consumed once: here when complete, else in OnInputFlushCompleted
                _flushTask = writer.FlushAsync();
#pragma warning restore CA2012
                if (!_flushTask.IsCompleted)
                {
                    // Over MaxReadBufferSize: stop reading. The kernel's receive window now pushes back on the peer.
                    _receiveState = ReceiveState.Paused;
                    _flushTask.GetAwaiter().UnsafeOnCompleted(_onFlushCompleted ??= OnInputFlushCompleted);
                    return;
                }

                if (!HandleFlushResult())
                {
                    return;
                }
            }
            else if (received == 0)
            {
                if (AwaitingProxyHeader)
                {
                    OnFinBeforeProxyHeader();
                    return;
                }

                OnPeerFin();
                return;
            }
            else
            {
                Error error = Errno.Last;
                if (error == Error.EAGAIN)
                {
                    counters.WouldBlock++;
                    _readable = false;
                    RearmIfFaultInjected();
                }
                else if (error != Error.EINTR)
                {
                    OnSocketError(error);
                    return;
                }
            }
        }
    }

    /// <summary>Runs on the loop when the application has consumed enough for a paused flush to complete.</summary>
    private void OnInputFlushCompleted()
    {
        if (_fd < 0 || _receiveState != ReceiveState.Paused)
        {
            return;
        }

        _receiveState = ReceiveState.Reading;

        if (HandleFlushResult() && _readable)
        {
            Receive();
        }
    }

    /// <summary>False when the application has completed its input: nothing more is read.</summary>
    private bool HandleFlushResult()
    {
        FlushResult result = _flushTask.GetAwaiter().GetResult();
        _flushTask = default;
        if (result.IsCompleted)
        {
            // The application will not read any more. Stop reading; the socket closes once the send side is done.
            CompleteInput(null);
            TryCloseAfterBothSidesDone();
            return false;
        }

        return true;
    }

    private void OnPeerFin()
    {
        _readable = false;
        SetCloseReason(EpollCloseReason.PeerClosed, null);
        CompleteInput(null);
        if (!_context.Options.AllowHalfOpen)
        {
            // As the Sockets transport does: HTTP relies on this to abort the requests of clients that went away.
            FireConnectionClosed();
        }

        TryCloseAfterBothSidesDone();
    }

    private void CompleteInput(Exception? error)
    {
        if (InputDone)
        {
            return;
        }

        _receiveState = ReceiveState.Done;
        _input.Writer.Complete(error);
    }

    /// <summary>
    /// An EAGAIN made up by the fault-injection seam left the kernel's readiness untouched, so no new edge will come:
    /// EPOLL_CTL_MOD re-checks readiness and queues the event again if the socket is ready (epoll_ctl(2)).
    /// </summary>
    private void RearmIfFaultInjected()
    {
        if (FaultInjection.IsEnabled && FaultInjection.TakeInjectedWouldBlock())
        {
            _ = Loop.Rearm(_fd, ConnectionEvents, Id);
        }
    }

    private unsafe void CheckPendingSocketError()
    {
        if (Libc.GetIntOption(_fd, Libc.SOL_SOCKET, Libc.SO_ERROR, out int pending) == 0 && pending != 0)
        {
            OnSocketError((Error)pending);
        }
    }
}

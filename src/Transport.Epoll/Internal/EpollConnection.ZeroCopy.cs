using System.Buffers;
using System.IO.Pipelines;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// MSG_ZEROCOPY sends. The kernel reads a zero-copy send's pages after sendmsg returns, so its bytes stay in the output
/// pipe (sent, not consumed) until the completion for it arrives on the socket's error queue; the pipe then releases
/// them, and they stay pinned (the GC must not move memory the kernel reads). A connection turns zero-copy off when
/// the kernel says it copied anyway, or sendmsg says ENOBUFS. Held bytes have a budget of MaxWriteBufferSize: at it,
/// the send side waits for a completion (see <see cref="ZeroCopySendRoom"/>). A graceful close waits, bounded, for the outstanding
/// completions. A connection that closes without them (a reset, an abort, that wait running out) was reset, which
/// purges the socket's send queue; its buffers go back to the pool only after <see cref="s_zeroCopyReleaseGrace"/>, for
/// the packets a network card may still be reading.
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>How long a graceful close waits for the kernel's last completions before it resets the connection.</summary>
    private static readonly TimeSpan s_zeroCopyDrainTimeout = TimeSpan.FromSeconds(2);

    /// <summary>How long after a reset the buffers of unfinished zero-copy sends stay out of the pool.</summary>
    private static readonly TimeSpan s_zeroCopyReleaseGrace = TimeSpan.FromSeconds(1);

    private static readonly Action<object?> s_zeroCopyDrainExpired = static state => ((EpollConnection)state!).OnZeroCopyDrainExpired();

    private static readonly Action<object?> s_zeroCopyReleaseOutput = static state => ((EpollConnection)state!).ReleaseZeroCopyOutput();

    private bool _zeroCopyOn;
    private bool _zeroCopyTried;
    private bool _zeroCopyUsed;
    private bool _zeroCopyClosePending;
    private bool _zeroCopyReleaseScheduled;
    private bool _waitingForZeroCopy;
    private ZeroCopyInFlight? _zeroCopyInFlight;

    private bool ZeroCopyPending => _zeroCopyInFlight is { Count: > 0 };

    /// <summary>The first output-stream position the kernel may still read from: nothing from here may be released.</summary>
    private long ZeroCopyHeldFrom => _zeroCopyInFlight?.HeldFrom ?? long.MaxValue;

    /// <summary>
    /// How many more bytes may be sent while zero-copy sends are outstanding. The pipe counts only bytes its reader
    /// has not examined against the writer's limit, and sent bytes are examined, so bytes held for completions would
    /// escape MaxWriteBufferSize: they get a budget of that size of their own.
    /// </summary>
    private long ZeroCopySendRoom
    {
        get
        {
            long max = _context.MaxWriteBufferSize;
            if (max <= 0 || !ZeroCopyPending)
            {
                return long.MaxValue;
            }

            return max - (_outputSent - ZeroCopyHeldFrom);
        }
    }

    /// <summary>Whether a send of <paramref name="bytes"/> goes zero-copy; turns SO_ZEROCOPY on at the first that may.</summary>
    private bool UseZeroCopy(long bytes)
    {
        int threshold = _context.Options.ZeroCopyThreshold ?? 0;
        if (threshold <= 0 || bytes < threshold)
        {
            return false;
        }

        if (!_zeroCopyOn)
        {
            if (_zeroCopyTried)
            {
                return false;
            }

            // socket(7) SO_ZEROCOPY: without it the flag is ignored. Unix sockets refuse it: they stay on copies.
            _zeroCopyTried = true;
            _zeroCopyOn = Libc.SetIntOption(_fd, Libc.SOL_SOCKET, Libc.SO_ZEROCOPY, 1) == 0;
        }

        return _zeroCopyOn;
    }

    /// <summary>A zero-copy sendmsg took <paramref name="streamPosition"/> onwards: hold its bytes, and keep the
    /// <paramref name="count"/> pins of its memory, until its completion.</summary>
    private void OnZeroCopySent(long streamPosition, Span<MemoryHandle> pins, int count)
    {
        _zeroCopyInFlight ??= new ZeroCopyInFlight();
        _zeroCopyInFlight.Add(streamPosition, pins, count);
        _zeroCopyUsed = true;
        Loop.Counters.ZeroCopySends++;
    }

    private void TurnZeroCopyOff(string reason)
    {
        if (_zeroCopyOn)
        {
            _zeroCopyOn = false;
            EpollLog.ZeroCopyOff(_logger, ConnectionId, reason);
        }
    }

    /// <summary>
    /// EPOLLERR on a socket that sent zero-copy usually means "completions are queued", not a failure. Reads them, and
    /// returns the events with EPOLLERR removed unless the socket also hung up or holds a real error.
    /// </summary>
    private uint HandleErrorQueue(uint events)
    {
        DrainZeroCopyCompletions();
        if (_fd < 0 || (events & (Libc.EPOLLHUP | Libc.EPOLLRDHUP)) != 0)
        {
            return events;
        }

        // A real error without a hang-up (rare) is still reported: SO_ERROR reads and clears it.
        CheckPendingSocketError();
        return events & ~Libc.EPOLLERR;
    }

    private void DrainZeroCopyCompletions()
    {
        ZeroCopyInFlight? inFlight = _zeroCopyInFlight;
        bool released = false;
        LoopCounters counters = Loop.Counters;
        while (_fd >= 0)
        {
            int result = Libc.ReadZeroCopyCompletion(_fd, out Libc.ZeroCopyCompletion completion);
            if (result < 0)
            {
                // EAGAIN: the queue is empty (EINTR cannot happen: MSG_ERRQUEUE never blocks).
                break;
            }

            if (result == 0)
            {
                continue;
            }

            counters.ZeroCopyCompletions++;
            if (completion.Copied)
            {
                counters.ZeroCopyCopied++;
                TurnZeroCopyOff("the kernel copied the data anyway");
            }

            // A range of sends, not necessarily the oldest ones (see ZeroCopyInFlight).
            if (inFlight is not null && inFlight.Complete(completion.First, completion.Last))
            {
                released = true;
            }
        }

        if (!released)
        {
            return;
        }

        if (_zeroCopyClosePending && !ZeroCopyPending)
        {
            // The graceful close was waiting for these: every byte is sent and acknowledged by the kernel.
            _zeroCopyClosePending = false;
            CompleteOutput(null);
            TryCloseAfterBothSidesDone();
            return;
        }

        if (_waitingForZeroCopy)
        {
            // The send side stopped at its budget for held bytes: it goes on from where it stopped.
            _waitingForZeroCopy = false;
            ReadOutput();
            return;
        }

        // Wake the send side so it releases the completed bytes from the pipe.
        RereadOutput();
    }

    /// <summary>The application completed its output and everything is sent, but the kernel still reads some of it.</summary>
    private void WaitForZeroCopyBeforeClose()
    {
        _zeroCopyClosePending = true;
        Loop.RunAfter((long)s_zeroCopyDrainTimeout.TotalMilliseconds, s_zeroCopyDrainExpired, this);
    }

    private void OnZeroCopyDrainExpired()
    {
        if (!_zeroCopyClosePending || _fd < 0)
        {
            return;
        }

        _zeroCopyClosePending = false;
        EpollLog.ZeroCopyCompletionsTimedOut(_logger, ConnectionId, _zeroCopyInFlight?.Count ?? 0, (long)s_zeroCopyDrainTimeout.TotalMilliseconds);

        // A reset purges the socket's send queue, so the kernel lets go of the pages (see ReleaseOutputAfterGrace).
        AbortOnLoop(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("The kernel did not complete the connection's zero-copy sends in time."), EpollCloseReason.Aborted);
    }

    /// <summary>
    /// The connection closed with zero-copy sends the kernel never completed. The close was a reset, which purges the
    /// socket's send queue, but a network card may still be reading packets it was handed: the output pipe (whose
    /// completion returns its memory to the pool) is completed a grace period later, and the pins are kept until then.
    /// </summary>
    private void ReleaseOutputAfterGrace()
    {
        if (_zeroCopyReleaseScheduled)
        {
            return;
        }

        _zeroCopyReleaseScheduled = true;
        Loop.RunAfter((long)s_zeroCopyReleaseGrace.TotalMilliseconds, s_zeroCopyReleaseOutput, this);
    }

    private void ReleaseZeroCopyOutput()
    {
        _zeroCopyInFlight?.ReleaseAll();
        _output.Reader.Complete();
    }
}

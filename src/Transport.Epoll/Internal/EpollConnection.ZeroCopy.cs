using System.IO.Pipelines;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// MSG_ZEROCOPY sends. The kernel reads a zero-copy send's pages after sendmsg returns, so its bytes stay in the output
/// pipe (sent, not consumed) until the completion for it arrives on the socket's error queue; the pipe then releases
/// them. A connection turns zero-copy off when the kernel says it copied anyway, or sendmsg says ENOBUFS. A graceful
/// close waits, bounded, for the outstanding completions; a connection that closes without them never gives its
/// buffers back to the pool (see <see cref="ZeroCopyQuarantine"/>).
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>How long a graceful close waits for the kernel's last completions before it resets the connection.</summary>
    private static readonly TimeSpan s_zeroCopyDrainTimeout = TimeSpan.FromSeconds(2);

    private static readonly Action<object?> s_zeroCopyDrainExpired = static state => ((EpollConnection)state!).OnZeroCopyDrainExpired();

    private bool _zeroCopyOn;
    private bool _zeroCopyTried;
    private bool _zeroCopyUsed;
    private bool _zeroCopyClosePending;
    private uint _zeroCopyNextId;
    private Queue<ZeroCopySend>? _zeroCopyInFlight;

    /// <summary>One zero-copy sendmsg: its number in the kernel's per-socket counter and where its bytes start.</summary>
    private readonly record struct ZeroCopySend(uint Id, long StreamPosition);

    private bool ZeroCopyPending => _zeroCopyInFlight is { Count: > 0 };

    /// <summary>The first output-stream position the kernel may still read from: nothing from here may be released.</summary>
    private long ZeroCopyHeldFrom => _zeroCopyInFlight is { Count: > 0 } queue ? queue.Peek().StreamPosition : long.MaxValue;

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

    /// <summary>A zero-copy sendmsg took <paramref name="streamPosition"/> onwards: hold its bytes until its completion.</summary>
    private void OnZeroCopySent(long streamPosition)
    {
        _zeroCopyInFlight ??= new Queue<ZeroCopySend>();
        _zeroCopyInFlight.Enqueue(new ZeroCopySend(_zeroCopyNextId++, streamPosition));
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
        Queue<ZeroCopySend>? inFlight = _zeroCopyInFlight;
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

            // TCP completes sends in order, as one range [First, Last] of the counter (wrapping at 2^32).
            uint span = completion.Last - completion.First;
            while (inFlight is { Count: > 0 } && inFlight.Peek().Id - completion.First <= span)
            {
                inFlight.Dequeue();
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

        if (_outputReadPending)
        {
            // Wake the send side so it releases the completed bytes from the pipe (and the writer, if they held it).
            _output.Reader.CancelPendingRead();
        }
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

        // A reset purges the socket's send queue, so the kernel lets go of the pages; the buffers are quarantined.
        AbortOnLoop(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("The kernel did not complete the connection's zero-copy sends in time."), EpollCloseReason.Aborted);
    }

    /// <summary>Instead of completing the output reader (which returns its memory to the pool), keep the pipe away.</summary>
    private void QuarantineOutput() => ZeroCopyQuarantine.Hold(_output);
}

/// <summary>
/// Output pipes of connections that closed while the kernel had not completed their zero-copy sends. Their memory is
/// never returned to the pool (another connection could be handed a page the kernel still reads); they are held here
/// for a while and then left to the garbage collector.
/// </summary>
internal static class ZeroCopyQuarantine
{
    private static readonly TimeSpan s_hold = TimeSpan.FromSeconds(60);
    private static readonly Lock s_lock = new();
    private static readonly Queue<(Pipe Pipe, long Until)> s_held = new();

    public static int Count
    {
        get
        {
            lock (s_lock)
            {
                return s_held.Count;
            }
        }
    }

    public static void Hold(Pipe pipe)
    {
        long now = Environment.TickCount64;
        lock (s_lock)
        {
            while (s_held.Count > 0 && s_held.Peek().Until <= now)
            {
                s_held.Dequeue();
            }

            s_held.Enqueue((pipe, now + (long)s_hold.TotalMilliseconds));
        }
    }
}

using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

internal sealed partial class EpollConnection
{
    /// <summary>The zero-copy part of the send side; null unless <see cref="EpollTransportOptions.ZeroCopyThreshold"/> is set.</summary>
    private readonly ZeroCopySender? _zeroCopy;

    private bool ZeroCopyPending => _zeroCopy is { Pending: true };

    /// <summary>The first output-stream position the kernel may still read from: nothing from here may be released.</summary>
    private long ZeroCopyHeldFrom => _zeroCopy?.HeldFrom ?? long.MaxValue;

    /// <summary>
    /// MSG_ZEROCOPY sends: the holds and their completions. The kernel reads a zero-copy send's pages after sendmsg
    /// returns, so its bytes stay in the output pipe (sent, not consumed) until the completion for it arrives on the
    /// socket's error queue; the pipe then releases them, and they stay pinned (the GC must not move memory the kernel
    /// reads). A connection turns zero-copy off when the kernel says it copied anyway, or sendmsg says ENOBUFS. Held bytes
    /// have a budget of MaxWriteBufferSize: at it, the send side waits for a completion (see <see cref="SendRoom"/>). A
    /// graceful close waits, bounded, for the outstanding completions. A connection that closes without them (a reset,
    /// an abort, that wait running out) was reset, which purges the socket's send queue; its buffers go back to the pool
    /// only after <see cref="s_releaseGrace"/>, for the packets a network card may still be reading. Only the loop's
    /// thread uses it (flushing threads never send on a zero-copy connection).
    /// </summary>
    private sealed class ZeroCopySender(EpollConnection connection, int threshold)
    {
        /// <summary>How long a graceful close waits for the kernel's last completions before it resets the connection.</summary>
        private static readonly TimeSpan s_drainTimeout = TimeSpan.FromSeconds(2);

        /// <summary>How long after a reset the buffers of unfinished zero-copy sends stay out of the pool.</summary>
        private static readonly TimeSpan s_releaseGrace = TimeSpan.FromSeconds(1);

        // Timers carry the connection, so a failure in them closes it (see EpollLoop.ConnectionOf).
        private static readonly Action<object?> s_drainExpired = static state => ((EpollConnection)state!)._zeroCopy!.OnDrainExpired();

        private static readonly Action<object?> s_releaseOutput = static state => ((EpollConnection)state!)._zeroCopy!.ReleaseOutput();

        private bool _on;
        private bool _tried;
        private bool _releaseScheduled;
        private ZeroCopyInFlight? _inFlight;

        /// <summary>Some send went zero-copy: from then on EPOLLERR usually means "completions are queued".</summary>
        public bool Used { get; private set; }

        /// <summary>Sends the kernel has not completed.</summary>
        public bool Pending => _inFlight is { Count: > 0 };

        /// <summary>The first output-stream position the kernel may still read from.</summary>
        public long HeldFrom => _inFlight?.HeldFrom ?? long.MaxValue;

        /// <summary>
        /// How many more bytes may be sent while zero-copy sends are outstanding. The pipe counts only bytes its reader
        /// has not examined against the writer's limit, and sent bytes are examined, so bytes held for completions would
        /// escape MaxWriteBufferSize: they get a budget of that size of their own.
        /// </summary>
        public long SendRoom(long sent)
        {
            long max = connection._context.MaxWriteBufferSize;
            if (max <= 0 || !Pending)
            {
                return long.MaxValue;
            }

            return max - (sent - HeldFrom);
        }

        /// <summary>Whether a send of <paramref name="bytes"/> goes zero-copy; turns SO_ZEROCOPY on at the first that may.</summary>
        public bool UseFor(long bytes)
        {
            if (bytes < threshold)
            {
                return false;
            }

            if (!_on)
            {
                if (_tried)
                {
                    return false;
                }

                // socket(7) SO_ZEROCOPY: without it the flag is ignored. Unix sockets refuse it: they stay on copies.
                _tried = true;
                _on = Libc.SetIntOption(connection._fd, Libc.SOL_SOCKET, Libc.SO_ZEROCOPY, 1) == 0;
            }

            return _on;
        }

        /// <summary>A zero-copy sendmsg took <paramref name="streamPosition"/> onwards: hold its bytes, and keep the
        /// <paramref name="count"/> pins of its memory, until its completion.</summary>
        public void OnSent(long streamPosition, Span<MemoryHandle> pins, int count)
        {
            _inFlight ??= new ZeroCopyInFlight();
            _inFlight.Add(streamPosition, pins, count);
            Used = true;
            connection.Loop.Counters.ZeroCopySends++;
        }

        public void TurnOff(string reason)
        {
            if (_on)
            {
                _on = false;
                EpollLog.ZeroCopyOff(connection._logger, connection.ConnectionId, reason);
            }
        }

        /// <summary>
        /// EPOLLERR on a socket that sent zero-copy usually means "completions are queued", not a failure. Reads them,
        /// and returns the events with EPOLLERR removed unless the socket also hung up or holds a real error.
        /// </summary>
        public uint HandleErrorQueue(uint events)
        {
            DrainCompletions();
            if (connection._fd < 0 || (events & (Libc.EPOLLHUP | Libc.EPOLLRDHUP)) != 0)
            {
                return events;
            }

            // A real error without a hang-up (rare) is still reported: SO_ERROR reads and clears it.
            connection.CheckPendingSocketError();
            return events & ~Libc.EPOLLERR;
        }

        /// <summary>The application completed its output and everything is sent, but the kernel still reads some of it.</summary>
        public void WaitBeforeClose()
            => connection.Loop.RunAfter((long)s_drainTimeout.TotalMilliseconds, s_drainExpired, connection);

        /// <summary>
        /// The connection closed with zero-copy sends the kernel never completed. The close was a reset, which purges the
        /// socket's send queue, but a network card may still be reading packets it was handed: the output pipe (whose
        /// completion returns its memory to the pool) is completed a grace period later, and the pins are kept until then.
        /// </summary>
        public void ReleaseOutputAfterGrace()
        {
            if (_releaseScheduled)
            {
                return;
            }

            _releaseScheduled = true;
            connection.Loop.RunAfter((long)s_releaseGrace.TotalMilliseconds, s_releaseOutput, connection);
        }

        private void DrainCompletions()
        {
            ZeroCopyInFlight? inFlight = _inFlight;
            bool released = false;
            LoopCounters counters = connection.Loop.Counters;
            while (connection._fd >= 0)
            {
                int result = Libc.ReadZeroCopyCompletion(connection._fd, out Libc.ZeroCopyCompletion completion);
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
                    TurnOff("the kernel copied the data anyway");
                }

                // A range of sends, not necessarily the oldest ones (see ZeroCopyInFlight).
                if (inFlight is not null && inFlight.Complete(completion.First, completion.Last))
                {
                    released = true;
                }
            }

            if (released)
            {
                connection.OnZeroCopyReleased();
            }
        }

        private void OnDrainExpired()
        {
            if (connection._sendState != SendState.AwaitingZeroCopyCompletions || connection._fd < 0)
            {
                return;
            }

            EpollLog.ZeroCopyCompletionsTimedOut(connection._logger, connection.ConnectionId, _inFlight?.Count ?? 0, (long)s_drainTimeout.TotalMilliseconds);

            // A reset purges the socket's send queue, so the kernel lets go of the pages (see ReleaseOutputAfterGrace).
            connection.AbortOnLoop(new ConnectionAbortedException("The kernel did not complete the connection's zero-copy sends in time."), EpollCloseReason.Aborted);
        }

        private void ReleaseOutput()
        {
            _inFlight?.ReleaseAll();
            connection._output.Reader.Complete();
        }
    }

    /// <summary>Completions released held bytes: the send side goes on from where they stopped it.</summary>
    private void OnZeroCopyReleased()
    {
        switch (_sendState)
        {
            case SendState.AwaitingZeroCopyCompletions when !ZeroCopyPending:
                // The graceful close was waiting for these: every byte is sent and acknowledged by the kernel.
                CompleteOutput(null);
                TryCloseAfterBothSidesDone();
                break;
            case SendState.AwaitingZeroCopyRoom:
                // The send side stopped at its budget for held bytes: it goes on from where it stopped.
                _sendState = SendState.Sending;
                ReadOutputAfterStop();
                break;
            default:
                // Wake the send side so it releases the completed bytes from the pipe.
                RereadOutput();
                break;
        }
    }
}

using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// Sending on the thread that flushed: the one exception to "a connection's syscalls happen on its loop"
/// (docs/ARCHITECTURE.md, "The connection").
///
/// When the application flushes from a thread other than the loop (the thread pool, the default scheduling; or after
/// an await in inline mode) and the send side is idle (parked on its output read), that thread runs the send itself:
/// one sendmsg, no eventfd write, no loop wake-up, no context switch. Handing every flush to the loop cost all three
/// per flush: Kestrel's copy of a large response (a write of ~20 KB per flush) ran at 0.47x the Sockets transport's
/// throughput at 2.1x its CPU per byte (benchmarks/README.md has the before and after).
///
/// Only flushes of at least <see cref="FlusherSendMinBytes"/> are sent there. Small ones (a typical response, each of
/// a pipelined batch) still go to the loop, whose end-of-turn send takes every response the turn produced at once
/// and keeps the loop's epoll_wait returning many events: sending each small flush on its thread cost 23% of the
/// requests per second at 64 connections and 77% pipelined (benchmarks/README.md).
///
/// And only the plain case runs there: a send that writes everything it was given. Anything else goes back to the
/// loop (<see cref="FlushingThreadSender.HandOver"/>), which reads the pipe again: a small flush, the output's end or a file job
/// (nothing consumed: handing the loop the read result itself instead cost pipelining a second writev per batch, as
/// the responses flushed after it were left for another read); a partial write or EAGAIN (EPOLLOUT readiness is
/// tracked on the loop); a socket error (closing is the loop's) or an exception from the application's side of the
/// pipe (the loop reports them). Zero-copy connections never send here (their completions are the loop's).
///
/// Exclusion is a gate in <see cref="FlushingThreadSender"/>: a flushing thread enters it with one compare-and-swap from
/// Open, or does not enter and schedules the send on the loop as before. The loop never enters it; it closes it for
/// good (<see cref="FlushingThreadSender.Shut"/>) before the things that must not overlap a send in progress: completing the
/// output pipe (its memory goes back to the pool), closing the fd (its number may go to the very next accept) and
/// reading the unsent bytes for an abort's log line. Everything else the loop does while a flushing thread sends
/// either touches the receive side only or cannot happen then: the flushing thread runs the output reader's one
/// continuation, so the loop is not in SendOutput, and the loop is never waiting for EPOLLOUT (a send parked on
/// EPOLLOUT has no read pending, so a flush schedules nothing). If the loop has to shut the gate while a flushing
/// thread is inside, it waits for it: that thread is doing one non-blocking sendmsg and a few pipe calls, and this
/// happens only when an abort or close meets a send in progress.
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>The smallest unsent output a flushing thread sends itself (Kestrel copies a response body 16 KiB at a time).</summary>
    private const long FlusherSendMinBytes = 16 * 1024;

    /// <summary>The output reader's scheduler when flushing threads may send (the option on, zero-copy off); else null.</summary>
    private readonly FlushingThreadSender? _flushingThread;

    /// <summary>True on a flushing thread that is inside the gate (the only thread that can be in SendOutput off the loop).</summary>
    private bool OnFlusher => !Loop.IsCurrentThread;

    /// <summary>
    /// On the loop, before completing the output pipe, closing the fd or reading unsent bytes: no flushing thread sends
    /// on this connection any more.
    /// </summary>
    private void ShutOutFlushers() => _flushingThread?.Shut();

    /// <summary>
    /// The output pipe's reader scheduler when flushing threads may send: runs the reader's continuation right there
    /// when the gate lets it in, otherwise on the loop (deferred to the end of its turn, as on the loop itself). It owns
    /// the gate and what a flushing thread hands back to the loop.
    /// </summary>
    private sealed class FlushingThreadSender(EpollConnection connection) : PipeScheduler
    {
        private const int GateOpen = 0;
        private const int GateFlusherInside = 1;
        private const int GateShut = 2;

        private static readonly Action<object?> s_resumeOnLoop = static state => ((EpollConnection)state!)._flushingThread!.ResumeOnLoop();

        private int _gate;

        /// <summary>Set by a flushing thread inside the gate when the loop must take over; read by the same thread as it leaves.</summary>
        private bool _handOver;

        /// <summary>Why a flushing thread gave the send back to the loop; read by the loop in <see cref="ResumeOnLoop"/>.</summary>
        private Error _error;
        private Exception? _exception;

        /// <summary>An exception the send path threw on a flushing thread; rethrown on the loop, which closes the connection.</summary>
        private System.Runtime.ExceptionServices.ExceptionDispatchInfo? _bug;

        public override void Schedule(Action<object?> action, object? state)
        {
            EpollLoop loop = connection.Loop;
            if (loop.IsCurrentThread || Interlocked.CompareExchange(ref _gate, GateFlusherInside, GateOpen) != GateOpen)
            {
                loop.Schedule(action, state);
                return;
            }

            bool handOver;
            try
            {
                _handOver = false;
                action(state);
            }
            catch (Exception ex)
            {
                // A bug on this thread's send path: the loop closes the connection (nobody else would, the output read
                // it was waiting on is gone), and the application's flush does not see the transport's exception.
                _bug = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex);
                _handOver = true;
            }
            finally
            {
                handOver = _handOver;
                Volatile.Write(ref _gate, GateOpen);
            }

            if (handOver)
            {
                loop.Schedule(s_resumeOnLoop, connection);
            }
        }

        /// <summary>Whether a flushing thread sends this read result itself: only a large flush with nothing special in it.</summary>
        public static bool Takes(in ReadResult result, SendFileJob? job, EpollConnection connection)
            => !result.IsCompleted && job is null && connection._fd >= 0 && !connection.SendDone
                && connection._positions.UnsentIn(result.Buffer) >= FlusherSendMinBytes
                && !connection.ByIdBusy;

        /// <summary>On a flushing thread, inside the gate: the rest of this send is the loop's (see the class comment).</summary>
        public void HandOver(Error error = Error.Success, Exception? exception = null)
        {
            _error = error;
            _exception = exception;
            _handOver = true;
        }

        /// <summary>
        /// On the loop: no flushing thread sends any more. Waits for one that is inside (a sendmsg and a few pipe calls,
        /// never blocking).
        /// </summary>
        public void Shut()
        {
            if (Interlocked.CompareExchange(ref _gate, GateShut, GateOpen) == GateOpen)
            {
                return;
            }

            SpinWait spin = default;
            while (Volatile.Read(ref _gate) != GateShut
                && Interlocked.CompareExchange(ref _gate, GateShut, GateOpen) != GateOpen)
            {
                // Spins, then sched_yield and sleeps: the flushing thread may share this core and need it to finish.
                spin.SpinOnce();
            }
        }

        /// <summary>
        /// On the loop: holds the gate while the loop sends bytes written by id with the output read pending, so that a
        /// flush meanwhile schedules the read's continuation on the loop instead of sending on its thread at the same
        /// time. False when a flushing thread is inside (or the gate is shut): the loop then goes through the pipe.
        /// </summary>
        public bool TryEnterFromLoop() => Interlocked.CompareExchange(ref _gate, GateFlusherInside, GateOpen) == GateOpen;

        /// <summary>On the loop, after <see cref="TryEnterFromLoop"/> returned true.</summary>
        public void ExitFromLoop() => Volatile.Write(ref _gate, GateOpen);

        /// <summary>The last resort of a close after a bug: shut without waiting (the waiting may be what failed).</summary>
        public void ShutNow() => Volatile.Write(ref _gate, GateShut);

        /// <summary>On the loop, after a flushing thread handed over: report its error, or read the pipe again and send.</summary>
        private void ResumeOnLoop()
        {
            if (_bug is { } bug)
            {
                // Thrown here, on the loop, it is handled as any connection work that throws: logged, connection closed.
                _bug = null;
                bug.Throw();
            }

            Error error = _error;
            Exception? exception = _exception;
            _error = Error.Success;
            _exception = null;
            if (connection._fd < 0 || connection.SendDone)
            {
                return;
            }

            if (exception is not null)
            {
                connection.FailOutput(exception);
            }
            else if (error != Error.Success)
            {
                connection.OnSocketError(error);
            }
            else
            {
                connection.ReadOutput();
            }
        }
    }
}

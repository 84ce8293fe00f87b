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
/// loop (<see cref="HandOverToLoop"/>), which reads the pipe again: a small flush, the output's end or a file job
/// (nothing consumed: handing the loop the read result itself instead cost pipelining a second writev per batch, as
/// the responses flushed after it were left for another read); a partial write or EAGAIN (EPOLLOUT readiness is
/// tracked on the loop); a socket error (closing is the loop's) or an exception from the application's side of the
/// pipe (the loop reports them). Zero-copy connections never send here (their completions are the loop's).
///
/// Exclusion is a gate, <see cref="_flusherGate"/>: a flushing thread enters it with one compare-and-swap from
/// Open, or does not enter and schedules the send on the loop as before. The loop never enters it; it closes it for
/// good (<see cref="ShutOutFlushers"/>) before the things that must not overlap a send in progress: completing the
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

    private const int GateOpen = 0;
    private const int GateFlusherInside = 1;
    private const int GateShut = 2;

    private static readonly Action<object?> s_resumeSendOnLoop = static state => ((EpollConnection)state!).ResumeSendOnLoop();

    private int _flusherGate;

    /// <summary>Set by a flushing thread inside the gate when the loop must take over; read by the same thread as it leaves.</summary>
    private bool _flusherHandOver;

    /// <summary>Why a flushing thread gave the send back to the loop; read by the loop in <see cref="ResumeSendOnLoop"/>.</summary>
    private Error _flusherError;
    private Exception? _flusherException;

    /// <summary>An exception the send path threw on a flushing thread; rethrown on the loop, which closes the connection.</summary>
    private System.Runtime.ExceptionServices.ExceptionDispatchInfo? _flusherBug;

    /// <summary>Whether flushes from other threads may send here: the option on, and zero-copy off (its state is the loop's).</summary>
    private bool FlusherSendsEnabled => _context.Options.SendOnFlushingThread && _context.Options.ZeroCopyThreshold is null;

    /// <summary>True on a flushing thread that is inside the gate (the only thread that can be in SendOutput off the loop).</summary>
    private bool OnFlusher => !Loop.IsCurrentThread;

    /// <summary>The output pipe's reader scheduler when flushing threads may send: runs the reader's continuation right
    /// there when the gate lets it in, otherwise on the loop (deferred to the end of its turn, as on the loop itself).</summary>
    private sealed class OutputScheduler(EpollConnection connection) : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state)
        {
            EpollLoop loop = connection.Loop;
            if (loop.IsCurrentThread || Interlocked.CompareExchange(ref connection._flusherGate, GateFlusherInside, GateOpen) != GateOpen)
            {
                loop.Schedule(action, state);
                return;
            }

            bool handOver;
            try
            {
                connection._flusherHandOver = false;
                action(state);
            }
            catch (Exception ex)
            {
                // A bug on this thread's send path: the loop closes the connection (nobody else would, the output read
                // it was waiting on is gone), and the application's flush does not see the transport's exception.
                connection._flusherBug = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex);
                connection._flusherHandOver = true;
            }
            finally
            {
                handOver = connection._flusherHandOver;
                Volatile.Write(ref connection._flusherGate, GateOpen);
            }

            if (handOver)
            {
                loop.Schedule(s_resumeSendOnLoop, connection);
            }
        }
    }

    /// <summary>On a flushing thread, inside the gate: the rest of this send is the loop's (see the class comment).</summary>
    private void HandOverToLoop(Error error = Error.Success, Exception? exception = null)
    {
        _flusherError = error;
        _flusherException = exception;
        _flusherHandOver = true;
    }

    /// <summary>On the loop, after a flushing thread handed over: report its error, or read the pipe again and send.</summary>
    private void ResumeSendOnLoop()
    {
        if (_flusherBug is { } bug)
        {
            // Thrown here, on the loop, it is handled as any connection work that throws: logged, connection closed.
            _flusherBug = null;
            bug.Throw();
        }

        Error error = _flusherError;
        Exception? exception = _flusherException;
        _flusherError = Error.Success;
        _flusherException = null;
        if (_fd < 0 || _sendCompleted)
        {
            return;
        }

        if (exception is not null)
        {
            FailOutput(exception);
        }
        else if (error != Error.Success)
        {
            OnSocketError(error);
        }
        else
        {
            ReadOutput();
        }
    }

    /// <summary>
    /// On the loop, before completing the output pipe, closing the fd or reading unsent bytes: no flushing thread sends
    /// on this connection any more. Waits for one that is inside (a sendmsg and a few pipe calls, never blocking).
    /// </summary>
    private void ShutOutFlushers()
    {
        if (Interlocked.CompareExchange(ref _flusherGate, GateShut, GateOpen) == GateOpen)
        {
            return;
        }

        SpinWait spin = default;
        while (Volatile.Read(ref _flusherGate) != GateShut
            && Interlocked.CompareExchange(ref _flusherGate, GateShut, GateOpen) != GateOpen)
        {
            // Spins, then sched_yield and sleeps: the flushing thread may share this core and need it to finish.
            spin.SpinOnce();
        }
    }
}

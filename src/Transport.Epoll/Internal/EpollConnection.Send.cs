using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// The send loop: reads the output pipe and, for each read, only chooses what comes next: write bytes
/// (<c>EpollConnection.SocketWrite.cs</c>), pump a file (<see cref="FileSender"/>), or wait (for EPOLLOUT, a zero-copy
/// completion (<see cref="ZeroCopySender"/>), the file, or more output). Where it stands in the stream is
/// <see cref="OutputPositions"/>; its states are in <c>EpollConnection.Lifecycle.cs</c>. It runs on the loop, or on the
/// thread that flushed (<see cref="FlushingThreadSender"/>).
/// </summary>
internal sealed partial class EpollConnection
{
    private readonly Action _onOutputReadable;
    private ValueTask<ReadResult> _readTask;
    private bool _outputReadPending;
    private OutputPositions _positions;

    /// <summary>Why the send loop stopped with a read result.</summary>
    private enum SendStop
    {
        /// <summary>Everything it may send now is sent (all of it, or all before a file still going out).</summary>
        Sent,

        /// <summary>The kernel took part of a write.</summary>
        Partial,

        /// <summary>Zero-copy bytes held are at their budget.</summary>
        HeldBack,
        SocketError,
        FileFailed,

        /// <summary>A graceful close by id reached the head of the by-id queue: everything before it is sent.</summary>
        ClosedById,
    }

    /// <summary>Tests only: thrown by the next send, on whichever thread runs it, to stand for a bug in the send path.</summary>
    internal Exception? SendFaultForTest { get; set; }

    /// <summary>Takes what the application has flushed and writes it; parks on EPOLLOUT when the kernel is full.</summary>
    private void ReadOutput()
    {
        while (!SendDone && _fd >= 0)
        {
#pragma warning disable CA2012 // consumed once: here when complete, else in OnOutputReadable
            _readTask = _output.Reader.ReadAsync();
#pragma warning restore CA2012
            if (!_readTask.IsCompleted)
            {
                _outputReadPending = true;
                _readTask.GetAwaiter().UnsafeOnCompleted(_onOutputReadable);
                return;
            }

            if (!SendOutput())
            {
                return;
            }
        }
    }

    /// <summary>The output reader's continuation, scheduled on the loop: runs after this turn's events.</summary>
    private void OnOutputReadable()
    {
        _outputReadPending = false;
        if (SendOutput())
        {
            ReadOutput();
        }
    }

    /// <summary>Sends one read result. False when the send side stops: done, failed, handed to the loop, or waiting.</summary>
    private bool SendOutput()
    {
        ThrowSendFaultForTest();
        if (!TryTakeReadResult(out ReadResult result))
        {
            return false;
        }

        // Read once: a flushing thread that saw no job here must not meet one below (it would drive the file, and a
        // failure there shuts the gate it is inside: it would spin on itself in Shut).
        SendFileJob? job = _files?.Job;
        if (OnFlusher && !FlushingThreadSender.Takes(result, job, this))
        {
            // Nothing consumed or examined: the loop reads again, and by then its read also takes what was flushed
            // since (the next pipelined responses), so they leave in one writev (see FlushingThreadSender).
            _output.Reader.AdvanceTo(result.Buffer.Start);
            _flushingThread!.HandOver();
            return false;
        }

        if (_fd < 0 || SendDone)
        {
            AbandonOutput(result.Buffer);
            return false;
        }

        // A cancelled read (a SendFileAsync arriving, a file range finishing) carries the buffer like any other.
        ReadOnlySequence<byte> buffer = result.Buffer;
        long bufferEnd = _positions.EndOf(buffer);
        if (job is { StreamPosition: < 0 })
        {
            // Everything flushed before the job is in this buffer, and nothing after it: its caller waits for the job.
            job.StreamPosition = bufferEnd;
        }

        SendStop stop = SendUntilStopped(buffer, bufferEnd, job, out Error error);
        _positions.Release(_output.Reader, buffer, ZeroCopyHeldFrom, examinedAll: stop is not (SendStop.Partial or SendStop.HeldBack));
        if (stop != SendStop.Sent)
        {
            Wait(stop, error);
            return false;
        }

        return !result.IsCompleted || !EndOutput(bufferEnd);
    }

    /// <summary>Writes bytes and pumps files, in stream order, until it may not go on.</summary>
    private SendStop SendUntilStopped(in ReadOnlySequence<byte> buffer, long bufferEnd, SendFileJob? job, out Error error)
    {
        error = Error.Success;
        while (true)
        {
            if (_byId is { HeldCount: > 0 } && job is null && !OnFlusher)
            {
                // A message by id is partly with the kernel: its rest goes before any other byte.
                SendStop byId = SendById(ref job, out error);
                if (byId != SendStop.Sent || job is not null)
                {
                    if (byId != SendStop.Sent)
                    {
                        return byId;
                    }

                    continue;
                }
            }

            if (job is not null && _positions.Sent >= job.StreamPosition)
            {
                switch (_files!.Step(job, bufferEnd))
                {
                    case FileProgress.Finished:
                        job = null;
                        continue;
                    case FileProgress.Failed:
                        return SendStop.FileFailed;
                    default:
                        // The file, or more of its placeholders, is still to come: what follows the job waits.
                        return SendStop.Sent;
                }
            }

            long limit = job?.StreamPosition ?? bufferEnd;
            if (_positions.Sent >= limit)
            {
                if (job is null && !OnFlusher && _byId is { IsEmpty: false } && !HandlerFileComing)
                {
                    // Every byte the handler flushed so far is sent (a read ends where a flush ended): messages by id
                    // go out here, between two of the handler's flushes (EpollConnection.ById.cs).
                    SendStop byId = SendById(ref job, out error);
                    if (byId == SendStop.Sent && job is not null)
                    {
                        continue;
                    }

                    return byId;
                }

                return SendStop.Sent;
            }

            long room = _zeroCopy?.SendRoom(_positions.Sent) ?? long.MaxValue;
            if (room <= 0)
            {
                return SendStop.HeldBack;
            }

            ReadOnlySequence<byte> pending = _positions.NextToSend(buffer, limit, room);
            long written = WriteBuffer(pending, out error);
            _positions.AddSent(written);
            if (error != Error.Success)
            {
                return SendStop.SocketError;
            }

            if (written < pending.Length)
            {
                CountPartialWrite();
                RearmIfFaultInjected();
                return SendStop.Partial;
            }
        }
    }

    /// <summary>What the send side waits for after a read it could not send all of.</summary>
    private void Wait(SendStop stop, Error error)
    {
        switch (stop)
        {
            case SendStop.SocketError when OnFlusher:
            case SendStop.Partial when OnFlusher:
                // Closing and EPOLLOUT are the loop's: it writes the rest, and parks on EPOLLOUT if it too hits EAGAIN.
                _flushingThread!.HandOver(error);
                break;
            case SendStop.SocketError:
                OnSocketError(error);
                break;
            case SendStop.FileFailed:
                _files!.Fail();
                break;
            case SendStop.ClosedById:
                CloseByIdOnLoop();
                break;
            case SendStop.Partial:
                // The kernel took part of it; the rest waits for EPOLLOUT (registered once, edge-triggered).
                _sendState = SendState.AwaitingWritable;
                break;
            case SendStop.HeldBack:
                // Left unexamined, what is not sent yet counts against MaxWriteBufferSize and holds the writer.
                _sendState = SendState.AwaitingZeroCopyRoom;
                break;
        }
    }

    /// <summary>The application completed its output and this read has sent all of it: FIN. False if it cannot end yet.</summary>
    private bool EndOutput(long bufferEnd)
    {
        if (_files?.Job is not null)
        {
            // The application completed its output without waiting for its SendFileAsync (or gave up on it). A
            // completed pipe answers every read at once, so waiting for the job here would spin the loop.
            AbortOnLoop(new ConnectionAbortedException("The output was completed while a file was being sent."), EpollCloseReason.Aborted);
            return true;
        }

        if (_positions.Sent != bufferEnd)
        {
            return false;
        }

        // Every byte is with the kernel (what was queued by id too: it went out at the end of this read): nothing more
        // is sent by id. Send FIN, keep reading (half-close) until the peer's FIN or the application's end.
        EndById();
        _ = Libc.shutdown(_fd, Libc.SHUT_WR);
        SetCloseReason(EpollCloseReason.LocalClose, null);
        if (ZeroCopyPending)
        {
            _sendState = SendState.AwaitingZeroCopyCompletions;
            _zeroCopy!.WaitBeforeClose();
            return true;
        }

        CompleteOutput(null);
        TryCloseAfterBothSidesDone();
        return true;
    }

    private bool TryTakeReadResult(out ReadResult result)
    {
        try
        {
            result = _readTask.GetAwaiter().GetResult();
            _readTask = default;
            return true;
        }
        catch (Exception ex)
        {
            _readTask = default;
            result = default;
            if (OnFlusher)
            {
                _flushingThread!.HandOver(exception: ex);
            }
            else
            {
                FailOutput(ex);
            }

            return false;
        }
    }

    /// <summary>
    /// Closed while the read was pending (abort, reset): the bytes are abandoned, except those the kernel may still read
    /// for a zero-copy send, which are never handed back to the pool (examined stays at the end, where the last send may
    /// have put it: a pipe refuses to move it back).
    /// </summary>
    private void AbandonOutput(in ReadOnlySequence<byte> buffer)
    {
        if (ZeroCopyPending)
        {
            _output.Reader.AdvanceTo(buffer.Start, buffer.End);
            _sendState = SendState.Done;
            _zeroCopy!.ReleaseOutputAfterGrace();
            return;
        }

        _output.Reader.AdvanceTo(buffer.End);
        CompleteOutput(null);
    }

    private void ThrowSendFaultForTest()
    {
        if (SendFaultForTest is { } fault)
        {
            SendFaultForTest = null;
            throw fault;
        }
    }

    /// <summary>The application completed its output with an error: nothing sensible can follow on this stream.</summary>
    private void FailOutput(Exception ex)
    {
        EpollLog.OutputFailed(_logger, ConnectionId, ex);
        AbortOnLoop(new ConnectionAbortedException("The application completed the output with an error.", ex), EpollCloseReason.Error);
    }

    private void CountPartialWrite()
    {
        if (OnFlusher)
        {
            Interlocked.Increment(ref Loop.FlusherCounters.PartialWrites);
        }
        else
        {
            Loop.Counters.PartialWrites++;
        }
    }

    /// <summary>Wakes a pending output read (its continuation then runs SendOutput with whatever the pipe holds): how
    /// the loop makes the send side look again after a file job or a zero-copy completion changed what it may do.</summary>
    /// <summary>
    /// Reads the output again after a stop that left bytes unsent (a partial write, zero-copy bytes at their budget).
    /// Those bytes were left unexamined, but a pipe's examined position never moves back: when an earlier read had
    /// examined past them (one that waited behind a file job, then a re-read placed the job), a plain read waits for new
    /// bytes with these still in the pipe, and whatever waits behind them waits for good (seen: a handler's file behind
    /// two bytes). A cancelled read returns whatever the pipe holds.
    /// </summary>
    private void ReadOutputAfterStop()
    {
        _output.Reader.CancelPendingRead();
        ReadOutput();
    }

    private void RereadOutput()
    {
        if (_outputReadPending)
        {
            _output.Reader.CancelPendingRead();
        }
    }

    private void CompleteOutput(Exception? error)
    {
        // The pipe's memory goes back to the pool below: no flushing thread may be sending from it.
        ShutOutFlushers();
        _sendState = SendState.Done;
        if (!_outputReadPending)
        {
            if (ZeroCopyPending)
            {
                // The kernel may still read these buffers: they go back to the pool only after a grace period.
                _zeroCopy!.ReleaseOutputAfterGrace();
                return;
            }

            _output.Reader.Complete(error);
        }
        else
        {
            // A ReadAsync is pending; wake it so its continuation completes the reader on the loop.
            _output.Reader.CancelPendingRead();
        }
    }
}

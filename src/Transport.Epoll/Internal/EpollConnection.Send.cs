using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

internal sealed partial class EpollConnection
{
    private readonly Action _onOutputReadable;
    private ValueTask<ReadResult> _readTask;
    private bool _outputReadPending;
    private bool _waitingForWritable;
    private bool _sendCompleted;

    /// <summary>Tests only: thrown by the next send, on whichever thread runs it, to stand for a bug in the send path.</summary>
    internal Exception? SendFaultForTest { get; set; }

    /// <summary>Output-stream position of the first byte the pipe still holds (bytes consumed so far).</summary>
    private long _outputReleased;

    /// <summary>Output-stream position of the next byte to send: past <see cref="_outputReleased"/> only within SendOutput.</summary>
    private long _outputSent;

    /// <summary>Takes what the application has flushed and writes it; parks on EPOLLOUT when the kernel is full.</summary>
    private void ReadOutput()
    {
        while (!_sendCompleted && _fd >= 0)
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

    /// <summary>
    /// Writes one read result. False when the send side stops (done, failed, or waiting for EPOLLOUT). The pipe is read
    /// as a stream: <see cref="_outputReleased"/> is the stream position of the buffer's first byte and
    /// <see cref="_outputSent"/> of the next byte to send; a file range handed over with SendFileAsync sits at a
    /// stream position of its own (see EpollConnection.SendFile.cs).
    /// </summary>
    private bool SendOutput()
    {
        if (SendFaultForTest is { } fault)
        {
            SendFaultForTest = null;
            throw fault;
        }

        ReadResult result;
        try
        {
            result = _readTask.GetAwaiter().GetResult();
        }
        catch (Exception ex)
        {
            _readTask = default;
            if (OnFlusher)
            {
                HandOverToLoop(exception: ex);
            }
            else
            {
                FailOutput(ex);
            }

            return false;
        }

        _readTask = default;
        PipeReader reader = _output.Reader;

        // Read once: a flushing thread that saw no job here must not meet one below (it would drive the file, and a
        // failure there shuts the gate it is inside: it would spin on itself in ShutOutFlushers).
        SendFileJob? job = _fileJob;
        if (OnFlusher && (result.IsCompleted || job is not null || _fd < 0 || _sendCompleted
            || result.Buffer.Length - (_outputSent - _outputReleased) < FlusherSendMinBytes))
        {
            // Not a case a flushing thread handles (a small flush, the end, a file job). Nothing consumed or examined:
            // the loop reads again, and by then its read also takes what was flushed since (the next pipelined
            // responses), so they leave in one writev (see EpollConnection.FlusherSend.cs).
            reader.AdvanceTo(result.Buffer.Start);
            HandOverToLoop();
            return false;
        }

        if (_fd < 0 || _sendCompleted)
        {
            // Closed while the read was pending (abort, reset): the bytes are abandoned, except those the kernel may
            // still read for a zero-copy send, which are never handed back to the pool (examined stays at the end,
            // where the last send may have put it: a pipe refuses to move it back).
            if (ZeroCopyPending)
            {
                reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                _sendCompleted = true;
                ReleaseOutputAfterGrace();
                return false;
            }

            reader.AdvanceTo(result.Buffer.End);
            CompleteOutput(null);
            return false;
        }

        // A cancelled read (a SendFileAsync arriving, a file range finishing) carries the buffer like any other.
        ReadOnlySequence<byte> buffer = result.Buffer;
        long bufferEnd = _outputReleased + buffer.Length;
        if (job is { StreamPosition: < 0 })
        {
            // Everything flushed before the job is in this buffer, and nothing after it: its caller waits for the job.
            job.StreamPosition = bufferEnd;
        }

        Error error = Error.Success;
        bool partial = false;
        bool heldBack = false;
        FileStep fileStep = FileStep.Waiting;
        while (true)
        {
            if (job is not null && _outputSent >= job.StreamPosition)
            {
                fileStep = ReachFileJob(job, bufferEnd);
                if (fileStep == FileStep.Done && _outputSent == job.PlaceholderEnd)
                {
                    FinishFileJob(job, SendFileOutcome.Sent);
                    job = null;
                    continue;
                }

                if (fileStep == FileStep.NotSupported)
                {
                    FinishFileJob(job, SendFileOutcome.NotSupported);
                    job = null;
                    continue;
                }

                // The file, or more of its placeholders, is still to come: what follows the job waits.
                break;
            }

            long limit = job is null ? bufferEnd : job.StreamPosition;
            if (_outputSent >= limit)
            {
                break;
            }

            long room = ZeroCopySendRoom;
            if (room <= 0)
            {
                // The bytes held for zero-copy completions are at their budget: a completion goes on from here.
                heldBack = true;
                break;
            }

            ReadOnlySequence<byte> pending = buffer.Slice(_outputSent - _outputReleased, Math.Min(limit - _outputSent, room));
            long written = WriteBuffer(pending, out error);
            _outputSent += written;
            if (error != Error.Success)
            {
                break;
            }

            if (written < pending.Length)
            {
                // The kernel took part of it; the rest waits for EPOLLOUT (registered once, edge-triggered).
                CountPartialWrite();
                RearmIfFaultInjected();
                partial = true;
                break;
            }
        }

        // Sent bytes are released, except from the first zero-copy send the kernel has not completed.
        long release = Math.Min(_outputSent, ZeroCopyHeldFrom);
        long sentInBuffer = _outputSent - _outputReleased;
        reader.AdvanceTo(buffer.GetPosition(release - _outputReleased), partial || heldBack ? buffer.GetPosition(sentInBuffer) : buffer.End);
        _outputReleased = release;

        if (error != Error.Success)
        {
            if (OnFlusher)
            {
                HandOverToLoop(error);
            }
            else
            {
                OnSocketError(error);
            }

            return false;
        }

        if (fileStep == FileStep.Failed)
        {
            FailFileJob();
            return false;
        }

        if (partial)
        {
            if (OnFlusher)
            {
                // EPOLLOUT is the loop's to watch: it writes the rest, and parks on EPOLLOUT if it too hits EAGAIN.
                HandOverToLoop();
            }
            else
            {
                _waitingForWritable = true;
            }

            return false;
        }

        if (heldBack)
        {
            // Left unexamined, what is not sent yet counts against MaxWriteBufferSize and holds the writer.
            _waitingForZeroCopy = true;
            return false;
        }

        if (result.IsCompleted && _fileJob is not null)
        {
            // The application completed its output without waiting for its SendFileAsync (or gave up on it). A
            // completed pipe answers every read at once, so waiting for the job here would spin the loop.
            AbortOnLoop(new ConnectionAbortedException("The output was completed while a file was being sent."), EpollCloseReason.Aborted);
            return false;
        }

        if (result.IsCompleted && _outputSent == bufferEnd)
        {

            // The application completed its output and every byte is with the kernel: send FIN, keep reading
            // (half-close) until the peer's FIN or the application's end.
            _ = Libc.shutdown(_fd, Libc.SHUT_WR);
            SetCloseReason(EpollCloseReason.LocalClose, null);
            if (ZeroCopyPending)
            {
                WaitForZeroCopyBeforeClose();
                return false;
            }

            CompleteOutput(null);
            TryCloseAfterBothSidesDone();
            return false;
        }

        return true;
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

    /// <summary>sendmsg(2) (a writev with MSG_NOSIGNAL) straight from the pipe's segments. Returns the bytes the kernel took.</summary>
    private unsafe long WriteBuffer(in ReadOnlySequence<byte> buffer, out Error error)
    {
        var tally = new SendTally();
        long written;
        if (Loop.IsCurrentThread)
        {
            WriteScratch scratch = Loop.WriteScratch;
            written = WriteBuffer(buffer, scratch.Vectors, scratch.Pins, ref tally, out error);
            Loop.Counters.AddLoopSends(tally);
        }
        else
        {
            // A flushing thread (EpollConnection.FlusherSend.cs): its iovecs and pins live on its own stack.
            IOVector* vectors = stackalloc IOVector[WriteScratch.MaxSegments];
            var pins = new FlusherPins();
            written = WriteBuffer(buffer, vectors, pins, ref tally, out error);
            Loop.FlusherCounters.AddFlusherSends(tally);
        }

        return written;
    }

    private unsafe long WriteBuffer(in ReadOnlySequence<byte> buffer, IOVector* vectors, Span<MemoryHandle> pins, ref SendTally tally, out Error error)
    {
        long total = 0;
        error = Error.Success;

        SequencePosition position = buffer.Start;
        while (true)
        {
            int count = 0;
            long batch = 0;
            while (count < WriteScratch.MaxSegments && buffer.TryGet(ref position, out ReadOnlyMemory<byte> segment))
            {
                if (segment.IsEmpty)
                {
                    continue;
                }

                pins[count] = segment.Pin();
                vectors[count].Base = pins[count].Pointer;
                vectors[count].Count = (nuint)segment.Length;
                batch += segment.Length;
                count++;
            }

            if (count == 0)
            {
                return total;
            }

            int flags = UseZeroCopy(batch) ? Libc.MSG_ZEROCOPY : 0;
            nint written;
            do
            {
                written = Libc.SendVectors(_fd, vectors, count, flags);
            }
            while (written < 0 && Errno.Last == Error.EINTR);

            if (written < 0 && flags != 0 && Errno.Last == Error.ENOBUFS)
            {
                // The pages a zero-copy send pins are charged to the socket's optmem (net.core.optmem_max): over it,
                // this connection copies from now on, starting with this very send.
                TurnZeroCopyOff("ENOBUFS");
                flags = 0;
                tally.Writes++;
                do
                {
                    written = Libc.SendVectors(_fd, vectors, count);
                }
                while (written < 0 && Errno.Last == Error.EINTR);
            }

            Error lastError = written < 0 ? Errno.Last : Error.Success;
            tally.Writes++;
            if (written > 0 && flags != 0)
            {
                // The kernel reads these pages after sendmsg returns: their pins move to the send's entry.
                OnZeroCopySent(_outputSent + total, pins, count);
            }

            for (int i = 0; i < count; i++)
            {
                pins[i].Dispose();
            }

            if (written < 0)
            {
                if (lastError != Error.EAGAIN)
                {
                    error = lastError;
                }
                else
                {
                    tally.WouldBlock++;
                    RearmIfFaultInjected();
                }

                return total;
            }

            total += written;
            tally.Bytes += written;
            _lastActivity = Loop.Now;
            if (written < batch)
            {
                return total;
            }
        }
    }

    /// <summary>Wakes a pending output read (its continuation then runs SendOutput with whatever the pipe holds): how
    /// the loop makes the send side look again after a file job or a zero-copy completion changed what it may do.</summary>
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
        _sendCompleted = true;
        _waitingForWritable = false;
        _waitingForZeroCopy = false;
        _zeroCopyClosePending = false;
        if (!_outputReadPending)
        {
            if (ZeroCopyPending)
            {
                // The kernel may still read these buffers: they go back to the pool only after a grace period.
                ReleaseOutputAfterGrace();
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

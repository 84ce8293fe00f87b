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

    /// <summary>Writes one read result. False when the send side stops (done, failed, or waiting for EPOLLOUT).</summary>
    private bool SendOutput()
    {
        ReadResult result;
        try
        {
            result = _readTask.GetAwaiter().GetResult();
        }
        catch (Exception ex)
        {
            // The application completed its output with an error: nothing sensible can follow on this stream.
            _readTask = default;
            EpollLog.OutputFailed(_logger, ConnectionId, ex);
            AbortOnLoop(new ConnectionAbortedException("The application completed the output with an error.", ex), EpollCloseReason.Error);
            return false;
        }

        _readTask = default;
        PipeReader reader = _output.Reader;
        if (_fd < 0 || _sendCompleted)
        {
            // Closed while the read was pending (abort, reset): the bytes are abandoned.
            reader.AdvanceTo(result.Buffer.End);
            CompleteOutput(null);
            return false;
        }

        if (result.IsCanceled)
        {
            reader.AdvanceTo(result.Buffer.Start);
            return !_sendCompleted;
        }

        ReadOnlySequence<byte> buffer = result.Buffer;
        if (!buffer.IsEmpty)
        {
            long written = WriteBuffer(buffer, out Error error);
            if (error != Error.Success)
            {
                reader.AdvanceTo(buffer.End);
                OnSocketError(error);
                return false;
            }

            if (written < buffer.Length)
            {
                // The kernel took part of it; the rest waits for EPOLLOUT (registered once, edge-triggered).
                Loop.Counters.PartialWrites++;
                RearmIfFaultInjected();
                reader.AdvanceTo(buffer.GetPosition(written));
                _waitingForWritable = true;
                return false;
            }
        }

        reader.AdvanceTo(buffer.End);
        if (result.IsCompleted)
        {
            // The application completed its output and every byte is with the kernel: send FIN, keep reading
            // (half-close) until the peer's FIN or the application's end.
            _ = Libc.shutdown(_fd, Libc.SHUT_WR);
            SetCloseReason(EpollCloseReason.LocalClose, null);
            CompleteOutput(null);
            TryCloseAfterBothSidesDone();
            return false;
        }

        return true;
    }

    /// <summary>sendmsg(2) (a writev with MSG_NOSIGNAL) straight from the pipe's segments. Returns the bytes the kernel took.</summary>
    private unsafe long WriteBuffer(in ReadOnlySequence<byte> buffer, out Error error)
    {
        WriteScratch scratch = Loop.WriteScratch;
        IOVector* vectors = scratch.Vectors;
        MemoryHandle[] pins = scratch.Pins;
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

            nint written;
            do
            {
                written = Libc.SendVectors(_fd, vectors, count);
            }
            while (written < 0 && Errno.Last == Error.EINTR);

            Error lastError = written < 0 ? Errno.Last : Error.Success;
            LoopCounters counters = Loop.Counters;
            counters.Writes++;
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
                    counters.WouldBlock++;
                    RearmIfFaultInjected();
                }

                return total;
            }

            total += written;
            counters.BytesSent += written;
            _lastActivity = Loop.Now;
            if (written < batch)
            {
                return total;
            }
        }
    }

    private void CompleteOutput(Exception? error)
    {
        _sendCompleted = true;
        _waitingForWritable = false;
        if (!_outputReadPending)
        {
            _output.Reader.Complete(error);
        }
        else
        {
            // A ReadAsync is pending; wake it so its continuation completes the reader on the loop.
            _output.Reader.CancelPendingRead();
        }
    }
}

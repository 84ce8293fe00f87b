using System.Buffers;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>Writing bytes: one sendmsg(2) per batch of up to <see cref="WriteScratch.MaxSegments"/> pipe segments.</summary>
internal sealed partial class EpollConnection
{
    /// <summary>sendmsg(2) (a writev with MSG_NOSIGNAL) straight from the pipe's segments. Returns the bytes the kernel took.</summary>
    private unsafe long WriteBuffer(in ReadOnlySequence<byte> buffer, out Error error)
    {
        var tally = new SendTally();
        long written;
        if (Loop.IsCurrentThread)
        {
            WriteScratch scratch = Loop.WriteScratch;
            written = WriteBuffer(buffer, scratch.Vectors, scratch.Pins, Loop.Now, ref tally, out error);
            Loop.Counters.AddLoopSends(tally);
        }
        else
        {
            // A flushing thread (FlushingThreadSender): its iovecs and pins live on its own stack.
            IOVector* vectors = stackalloc IOVector[WriteScratch.MaxSegments];
            var pins = new FlusherPins();
            // The loop's clock is as old as its last wake-up, and the loop may sleep through these sends: read the clock.
            written = WriteBuffer(buffer, vectors, pins, Environment.TickCount64, ref tally, out error);
            Loop.FlusherCounters.AddFlusherSends(tally);
        }

        return written;
    }

    private unsafe long WriteBuffer(in ReadOnlySequence<byte> buffer, IOVector* vectors, Span<MemoryHandle> pins, long now, ref SendTally tally, out Error error)
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

            int flags = _zeroCopy is not null && _zeroCopy.UseFor(batch) ? Libc.MSG_ZEROCOPY : 0;
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
                _zeroCopy!.TurnOff("ENOBUFS");
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
                _zeroCopy!.OnSent(_positions.Sent + total, pins, count);
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
            _lastActivity = now;
            if (written < batch)
            {
                return total;
            }
        }
    }
}

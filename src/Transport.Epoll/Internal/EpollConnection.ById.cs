using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// Addressing by id (docs/ARCHITECTURE.md, "Addressing by id"): the connection's side of <see cref="IEpollConnections"/>.
/// Writers on any thread queue messages (<see cref="ByIdQueue"/>) and schedule one look by the loop; the loop sends them
/// from the send loop, only where the output pipe's read ends (every byte the handler flushed so far is sent, and a
/// pipe read always ends at the end of a flush: <c>FlushAsync</c> is what makes advanced bytes readable), so a message
/// never lands inside the handler's output nor inside another message. A message the kernel took part of is finished
/// before anything else is sent. Only the loop sends them: a flushing thread hands the send back to the loop while any
/// are queued or in flight (<see cref="FlushingThreadSender.Takes"/>).
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>Null until the handler opts in: most connections never do, and pay one field for it.</summary>
    private ByIdQueue? _byId;

    /// <summary>The listener's endpoint as bound; null for a connection not accepted on a listener.</summary>
    public EndPoint? ListenEndPoint { get; set; }

    public ByIdQueue? ById => Volatile.Read(ref _byId);

    /// <summary>Loop only: where this connection is in its loop's list of addressable connections; -1 when not listed.</summary>
    public int AddressableSlot { get; set; } = -1;

    /// <summary>Messages by id are queued or partly sent: the send belongs to the loop.</summary>
    private bool ByIdBusy => Volatile.Read(ref _byId) is { } queue && (queue.HeldCount > 0 || !queue.IsEmpty);

    public ulong MakeAddressable(ReadOnlySpan<byte> firstMessage = default)
    {
        if (!ReferenceEquals(Transport, OriginalTransport))
        {
            throw new InvalidOperationException("This connection's Transport was replaced (TLS, or other middleware): bytes written by id would bypass it.");
        }

        // The first message is queued before the queue is published: nothing written by id can go before it.
        var queue = new ByIdQueue();
        if (!firstMessage.IsEmpty)
        {
            queue.TryEnqueue(new ByIdItem(ByIdMessage.Rent(firstMessage)), firstMessage.Length);
        }

        if (Interlocked.CompareExchange(ref _byId, queue, null) is { } existing)
        {
            queue.Close();
            return existing.IsRevoked
                ? throw new InvalidOperationException("This connection is no longer addressable by id: its Transport was replaced.")
                : Id;
        }

        _context.Addressable.Add(this);
        Loop.ListAddressable(this);
        EpollLog.MadeAddressable(_logger, ConnectionId);

        // The loop closes the fd, then forgets the connection here: a close that came first would leave it listed.
        if (FileDescriptor < 0)
        {
            _context.Addressable.Remove(this);
            queue.Close();
        }
        else if (!firstMessage.IsEmpty)
        {
            WakeLoopForById(queue);
        }

        return Id;
    }

    /// <summary>Its Transport was replaced (TLS, or other middleware that wraps the byte stream): nothing more may be
    /// written by id, since those bytes would bypass the wrapper.</summary>
    private void RevokeAddressing(string why)
    {
        if (ById is { } queue && queue.TryRevoke())
        {
            _context.Addressable.Remove(this);
            queue.Close();
            EpollLog.AddressingRevoked(_logger, ConnectionId, why);
        }
    }

    /// <summary>The by-id queue when it takes <paramref name="length"/> more bytes; else null, with why: Gone (no queue,
    /// or it refuses writes) or Full (at MaxWriteBufferSize, counted in <c>epoll.byid.refused</c>, whichever way the
    /// message came: a write, a broadcast by ids, a broadcast's fan-out).</summary>
    private ByIdQueue? QueueTaking(long length, out EpollWriteResult refused)
    {
        ByIdQueue? queue = ById;
        if (queue is null || queue.RefusesWrites)
        {
            refused = EpollWriteResult.Gone;
            return null;
        }

        if (queue.IsFull(length, _context.MaxWriteBufferSize))
        {
            _context.Metrics.ByIdFull();
            refused = EpollWriteResult.Full;
            return null;
        }

        refused = EpollWriteResult.Written;
        return queue;
    }

    public EpollWriteResult WriteById(ReadOnlySpan<byte> message)
    {
        if (QueueTaking(message.Length, out EpollWriteResult refused) is not { } queue)
        {
            return refused;
        }

        if (message.IsEmpty)
        {
            return EpollWriteResult.Written;
        }

        return Enqueue(queue, new ByIdItem(ByIdMessage.Rent(message)), message.Length) ? EpollWriteResult.Written : EpollWriteResult.Gone;
    }

    /// <summary>Any thread: queues one reference of a broadcast's shared message; false when gone or full.</summary>
    public bool EnqueueShared(ByIdMessage message)
    {
        if (QueueTaking(message.Length, out _) is not { } queue)
        {
            return false;
        }

        message.AddReference();
        return Enqueue(queue, new ByIdItem(message), message.Length);
    }

    /// <summary>On the loop, from a broadcast's fan-out (already in order): queues <paramref name="message"/>, with a
    /// reference the caller took for it, unless the connection is gone or full. True when that reference was used
    /// (queued, or released by a queue that closed meanwhile).</summary>
    public bool EnqueueSharedOnLoop(ByIdMessage message)
    {
        if (QueueTaking(message.Length, out _) is not { } queue)
        {
            return false;
        }

        if (queue.TryEnqueue(new ByIdItem(message), message.Length))
        {
            WakeLoopForById(queue);
        }

        return true;
    }

    /// <summary>
    /// Any thread: queues what a caller wrote by id. Straight onto the connection's queue, unless a broadcast (or a
    /// write routed behind one) is still waiting for the loop: then through the loop's work queue, so that it lands
    /// after the broadcast this thread may have made before it. False when the queue closed (the item is released).
    /// </summary>
    private bool Enqueue(ByIdQueue queue, in ByIdItem item, long bytes)
    {
        if (!Loop.ByIdRoutingPending)
        {
            if (!queue.TryEnqueue(item, bytes))
            {
                return false;
            }

            WakeLoopForById(queue);
            return true;
        }

        queue.Reserve(bytes);
        Loop.RouteById(new RoutedWrite(this, queue, item));
        return true;
    }

    /// <summary>On the loop: a write routed behind a broadcast reached its turn.</summary>
    public void EnqueueRouted(ByIdQueue queue, in ByIdItem item)
    {
        if (queue.TryEnqueueReserved(item))
        {
            WakeLoopForById(queue);
        }
    }

    public async ValueTask<EpollWriteResult> WriteByIdAsync(ReadOnlyMemory<byte> message, CancellationToken cancellationToken)
    {
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            EpollWriteResult result = WriteById(message.Span);
            if (result != EpollWriteResult.Full)
            {
                return result;
            }

            await ById!.WaitForRoomAsync(_context.MaxWriteBufferSize, cancellationToken).ConfigureAwait(false);
        }
    }

    public bool CloseById()
    {
        ByIdQueue? queue = ById;
        return queue is not null && !queue.IsClosed && queue.TryRequestClose() && Enqueue(queue, ByIdItem.Close, 0);
    }

    public bool AbortById()
    {
        if (ById is null || FileDescriptor < 0)
        {
            return false;
        }

        Abort(new ConnectionAbortedException("The connection was aborted by id."));
        return true;
    }

    public async Task<EpollWriteResult> SendFileByIdAsync(SafeFileHandle file, long offset, long count, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (file.IsInvalid || file.IsClosed)
        {
            throw new ArgumentException("The file handle is closed or invalid.", nameof(file));
        }

        cancellationToken.ThrowIfCancellationRequested();
        ByIdQueue? queue = ById;
        if (queue is null || queue.RefusesWrites)
        {
            return EpollWriteResult.Gone;
        }

        if (!_context.Options.EnableSendFile || !IsRegularFile(file))
        {
            // The pipe's copy fallback is the handler's; a copy here could not keep the file whole among other messages.
            throw new NotSupportedException("Files are sent by id with sendfile(2) only: EnableSendFile is off or the handle is not a regular file.");
        }

        if (count == 0)
        {
            return EpollWriteResult.Written;
        }

        var job = new SendFileJob(file, offset, count, placeholders: 0) { ById = true };
        bool added = false;
        file.DangerousAddRef(ref added);
        try
        {
            job.FileFd = (int)file.DangerousGetHandle();
            if (!Enqueue(queue, new ByIdItem(job, cancellationToken), 0))
            {
                return EpollWriteResult.Gone;
            }

            using CancellationTokenRegistration registration = RegisterFileJobCancellation(job, cancellationToken);

            SendFileOutcome outcome;
            try
            {
                outcome = await job.Completion.Task.ConfigureAwait(false);
            }
            catch (ConnectionAbortedException) when (FileDescriptor < 0 || queue.IsClosed)
            {
                return EpollWriteResult.Gone;
            }

            return outcome == SendFileOutcome.Sent
                ? EpollWriteResult.Written
                : throw new NotSupportedException("The kernel refused sendfile(2) for this file; nothing of it was sent.");
        }
        finally
        {
            if (added)
            {
                file.DangerousRelease();
            }
        }
    }

    public EpollConnectionInfo? GetInfo()
    {
        ByIdQueue? queue = ById;
        if (queue is null || FileDescriptor < 0 || queue.IsRevoked)
        {
            return null;
        }

        return new EpollConnectionInfo(Id, LocalEndPoint, RemoteEndPoint, ListenEndPoint, LoopIndex,
            queue.RefusesWrites ? EpollConnectionState.Closing : EpollConnectionState.Open, Direction, queue.QueuedBytes);
    }

    /// <summary>Any thread: makes sure the loop looks at the queue soon (one scheduled look per connection at a time).</summary>
    private void WakeLoopForById(ByIdQueue queue)
    {
        if (queue.TryClaimWakeUp())
        {
            Loop.WakeForById(this, queue);
        }
    }

    /// <summary>
    /// On the loop, when a writer queued something. The common case, the send side idle on its output read (every byte
    /// the handler flushed is sent, and nothing flushed since): the queue is sent right here, holding the
    /// flushing threads' gate. Otherwise (a send in progress, a file, a partial write, a flushing thread inside) it
    /// wakes the send loop, which sends the queue where its read ends: a cancelled read when nothing new was flushed,
    /// and cancelling when no read is pending makes the next one return at once, so no wake-up is lost.
    /// </summary>
    public void LookAtById()
    {
        ByIdQueue? queue = ById;
        if (queue is null)
        {
            return;
        }

        queue.WakeUpRan();
        if (_fd < 0 || SendDone || HandlerFileComing)
        {
            // A handler's file is on its way: the send loop sends the queue once that file is out.
            return;
        }

        // A read that completed (its continuation queued behind this) holds bytes the handler flushed before the
        // message was written: they go first, through the send loop.
        if (!_outputReadPending || _readTask.IsCompleted || _sendState != SendState.Sending || _files?.Job is not null
            || queue.HeldCount > 0 || _flushingThread?.TryEnterFromLoop() == false)
        {
            _output.Reader.CancelPendingRead();
            return;
        }

        SendFileJob? job = null;
        SendStop stop;
        Error error;
        try
        {
            stop = SendById(ref job, out error);
        }
        finally
        {
            _flushingThread?.ExitFromLoop();
        }

        switch (stop)
        {
            case SendStop.SocketError:
                OnSocketError(error);
                break;
            case SendStop.ClosedById:
                CloseByIdOnLoop();
                break;
            case SendStop.Sent when job is null:
                break;
            default:
                // A partial write or a file: the send loop takes over (it parks on EPOLLOUT or drives the file) when
                // its pending read returns.
                _output.Reader.CancelPendingRead();
                break;
        }
    }

    /// <summary>EPOLLOUT with a message by id partly sent: the send loop must run even if the handler flushed nothing.
    /// Cancelled before the read is issued, so the read returns at once on the loop and no flushing thread can take it.</summary>
    private void PrepareWritableForById()
    {
        if (_byId is { HeldCount: > 0 } && !SendDone)
        {
            _output.Reader.CancelPendingRead();
        }
    }

    /// <summary>
    /// On the loop, from the send loop, where every byte of the pipe's read is sent: sends what is queued by id, several
    /// messages per sendmsg. Stops at a partial write (the rest first, at EPOLLOUT), at a file range (installed as the
    /// connection's file job at the current stream position; <paramref name="job"/> is set), or at a graceful close.
    /// </summary>
    private unsafe SendStop SendById(ref SendFileJob? job, out Error error)
    {
        error = Error.Success;
        ByIdQueue queue = _byId!;
        long limit = _context.MaxWriteBufferSize;
        WriteScratch scratch = Loop.WriteScratch;
        IOVector* vectors = scratch.Vectors;
        ByIdMessage?[] batch = Loop.ByIdBatch;
        while (true)
        {
            int count = 0;
            long total = 0;
            List<ByIdMessage>? heldList = queue.Held;
            int held = heldList?.Count ?? 0;
            for (int i = 0; i < held && count < WriteScratch.MaxSegments; i++)
            {
                ByIdMessage message = heldList![i];
                int skip = i == 0 ? queue.HeldOffset : 0;
                batch[count] = message;
                vectors[count].Base = message.Pointer + skip;
                vectors[count].Count = (nuint)(message.Length - skip);
                total += message.Length - skip;
                count++;
            }

            int fromQueue = 0;
            while (count < WriteScratch.MaxSegments && !queue.IsClosed && queue.TryTake(out ByIdItem item))
            {
                if (item.Message is not { } next)
                {
                    // A file or the close: it goes after this batch (NextByIdItem).
                    queue.PutBack(item);
                    break;
                }

                batch[count] = next;
                vectors[count].Base = next.Pointer;
                vectors[count].Count = (nuint)next.Length;
                total += next.Length;
                count++;
                fromQueue++;
            }

            if (count == 0)
            {
                SendStop stop = NextByIdItem(queue, ref job, out bool goOn);
                if (goOn)
                {
                    continue;
                }

                return stop;
            }

            nint written;
            do
            {
                written = Libc.SendVectors(_fd, vectors, count);
            }
            while (written < 0 && Errno.Last == Error.EINTR);

            Error sendError = written < 0 ? Errno.Last : Error.Success;
            LoopCounters counters = Loop.Counters;
            counters.Writes++;
            long took = Math.Max(0, (long)written);
            counters.BytesSent += took;
            if (took > 0)
            {
                _lastActivity = Loop.Now;
            }

            // Walk the batch: messages the kernel took are released; the first it did not finish and those after it
            // are held, in order, ahead of the queue.
            int heldOffset = queue.HeldOffset;
            heldList?.Clear();
            long left = took;
            for (int i = 0; i < count; i++)
            {
                ByIdMessage message = batch[i]!;
                batch[i] = null;
                int skip = i < held && i == 0 ? heldOffset : 0;
                long rest = message.Length - skip;
                if (left >= rest)
                {
                    left -= rest;
                    message.Release();
                    continue;
                }

                heldList ??= queue.Held = new List<ByIdMessage>(WriteScratch.MaxSegments);
                if (heldList.Count == 0)
                {
                    queue.HeldOffset = skip + (int)left;
                    left = 0;
                }

                heldList.Add(message);
            }

            queue.HeldCount = heldList?.Count ?? 0;
            queue.OnSent(took, limit);
            counters.ByIdMessages += fromQueue;

            if (written < 0 && sendError != Error.EAGAIN)
            {
                error = sendError;
                return SendStop.SocketError;
            }

            if (took < total)
            {
                if (written < 0)
                {
                    counters.WouldBlock++;
                }
                else
                {
                    counters.PartialWrites++;
                }

                return SendStop.Partial;
            }
        }
    }

    /// <summary>The queue's head is not a message: a file range to install, a close, or nothing.</summary>
    private SendStop NextByIdItem(ByIdQueue queue, ref SendFileJob? job, out bool goOn)
    {
        goOn = false;
        if (queue.IsClosed || !queue.TryTake(out ByIdItem item))
        {
            return SendStop.Sent;
        }

        if (item.Message is not null)
        {
            // Enqueued since the batch found the queue empty: it goes with the next batch.
            queue.PutBack(item);
            goOn = true;
            return SendStop.Sent;
        }

        if (item.IsClose)
        {
            return SendStop.ClosedById;
        }

        SendFileJob file = item.File!;
        if (item.FileCancellation.IsCancellationRequested)
        {
            file.Fail(new OperationCanceledException("SendFileAsync by id was cancelled before the file went out.", item.FileCancellation));
            goOn = true;
            return SendStop.Sent;
        }

        FileSender files = _files ??= new FileSender(this);
        if (files.Job is not null)
        {
            file.Fail(new InvalidOperationException("A file is already being sent on this connection."));
            goOn = true;
            return SendStop.Sent;
        }

        files.StartAt(file, _positions.Sent);
        job = file;
        return SendStop.Sent;
    }

    /// <summary>On the loop: the graceful close by id reached the head of the queue, everything before it is sent.</summary>
    private void CloseByIdOnLoop()
    {
        EpollLog.ClosedById(_logger, ConnectionId);
        SetCloseReason(EpollCloseReason.LocalClose, null);
        ById?.Close();

        // The handler's input ends as at a FIN from the peer; its output is closed.
        CompleteInput(null);
        CompleteOutput(null);
        CloseFd();
    }

    /// <summary>On the loop, as the output ends or the fd closes: nothing more goes out by id; what is left is released.</summary>
    private void EndById()
    {
        if (_byId is not { } queue)
        {
            return;
        }

        queue.Close();
        queue.ReleaseLookahead();
        if (queue.Held is { Count: > 0 } held)
        {
            long bytes = 0;
            for (int i = 0; i < held.Count; i++)
            {
                bytes += held[i].Length - (i == 0 ? queue.HeldOffset : 0);
                held[i].Release();
            }

            held.Clear();
            queue.HeldCount = 0;
            queue.OnSent(bytes, _context.MaxWriteBufferSize);
        }
    }

    /// <summary>On the loop, at the close: the connection leaves the transport's addressable set.</summary>
    private void ForgetAddressing()
    {
        Loop.UnlistAddressable(this);
        EndById();
        if (_byId is { IsRevoked: false })
        {
            _context.Addressable.Remove(this);
        }
    }
}

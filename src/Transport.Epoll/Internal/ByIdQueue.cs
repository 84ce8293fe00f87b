using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace Transport.Epoll.Internal;

/// <summary>One entry of a connection's by-id queue: a message, a file range, or the graceful close.</summary>
internal readonly struct ByIdItem
{
    public ByIdItem(ByIdMessage message)
    {
        Message = message;
    }

    public ByIdItem(SendFileJob file, CancellationToken cancellationToken)
    {
        File = file;
        FileCancellation = cancellationToken;
    }

    private ByIdItem(bool close)
    {
        IsClose = close;
    }

    public static ByIdItem Close => new(close: true);

    public ByIdMessage? Message { get; }

    public SendFileJob? File { get; }

    public CancellationToken FileCancellation { get; }

    public bool IsClose { get; }
}

/// <summary>
/// What is written to one addressable connection by id, waiting for its loop: a lock-free multi-producer queue (any
/// thread enqueues, only the loop dequeues), the bytes it holds (counted against MaxWriteBufferSize), and the writers
/// waiting for room. The steady path takes no lock: an enqueue, two interlocked adds and, when the loop has no wake-up
/// for this connection pending yet, one <see cref="EpollLoop.Schedule"/>. Writers waiting for room (the slow path)
/// take a lock. Once <see cref="IsClosed"/>, nothing more is sent: what is queued then is released.
/// </summary>
internal sealed class ByIdQueue
{
    private readonly ConcurrentQueue<ByIdItem> _items = new();
    private readonly Lock _waitersLock = new();
    private List<TaskCompletionSource>? _waiters;
    private int _waiterCount;
    private long _queuedBytes;
    private int _closed;
    private int _closeRequested;
    private int _wakeUpPending;
    private int _revoked;
    private int _heldCount;
    private ByIdItem _lookahead;
    private bool _hasLookahead;

    /// <summary>Loop only: messages dequeued but not all sent (the first partly, from <see cref="HeldOffset"/>). Made at
    /// the first partial write of a message; never more than one sendmsg batch.</summary>
    public List<ByIdMessage>? Held { get; set; }

    /// <summary>Loop only: the bytes of <c>Held[0]</c> the kernel took already.</summary>
    public int HeldOffset { get; set; }

    /// <summary>The count of <see cref="Held"/>, for a flushing thread to read: a message is partly sent while it is not 0.</summary>
    public int HeldCount
    {
        get => Volatile.Read(ref _heldCount);
        set => Volatile.Write(ref _heldCount, value);
    }

    /// <summary>The connection stopped being addressable (its Transport was replaced).</summary>
    public bool IsRevoked => Volatile.Read(ref _revoked) != 0;

    /// <summary>True for the one caller that revokes.</summary>
    public bool TryRevoke() => Interlocked.Exchange(ref _revoked, 1) == 0;

    /// <summary>Bytes written by id that the kernel has not taken yet (the loop's partly sent ones included).</summary>
    public long QueuedBytes => Volatile.Read(ref _queuedBytes);

    /// <summary>Nothing more will be sent: the connection closed, its output ended, or it stopped being addressable.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>Closed, or a graceful close is queued (what is written after it would never go out).</summary>
    public bool RefusesWrites => Volatile.Read(ref _closed) != 0 || Volatile.Read(ref _closeRequested) != 0;

    /// <summary>Nothing queued. (ConcurrentQueue.IsEmpty does not pin the queue's segment; TryPeek would: a segment
    /// peeked at is never reused, so a queue peeked at on every send would allocate a new segment every 32 messages.)</summary>
    public bool IsEmpty => !Volatile.Read(ref _hasLookahead) && _items.IsEmpty;

    /// <summary>Loop only: the next connection in its loop's list of connections to look at (see EpollLoop.ById.cs).</summary>
    public EpollConnection? NextReady { get; set; }

    /// <summary>Whether <paramref name="bytes"/> more would go past <paramref name="limit"/> (0: no limit). A message
    /// larger than the limit is still taken when nothing is queued, as a pipe takes a write larger than its threshold.</summary>
    public bool IsFull(long bytes, long limit)
    {
        long queued = QueuedBytes;
        return limit > 0 && queued > 0 && queued + bytes > limit;
    }

    /// <summary>Queues <paramref name="item"/>; false when the queue closed meanwhile (the item is then released here
    /// or by the loop, never sent).</summary>
    public bool TryEnqueue(in ByIdItem item, long bytes)
    {
        Reserve(bytes);
        return TryEnqueueReserved(item);
    }

    /// <summary>Counts <paramref name="bytes"/> as queued ahead of the item itself (a write routed through the loop is
    /// counted against the limit from the moment it is accepted).</summary>
    public void Reserve(long bytes) => Interlocked.Add(ref _queuedBytes, bytes);

    /// <summary>Queues <paramref name="item"/>, whose bytes were reserved; false as <see cref="TryEnqueue"/>.</summary>
    public bool TryEnqueueReserved(in ByIdItem item)
    {
        _items.Enqueue(item);

        // The enqueue is a full fence, and so is the loop's Close before it empties the queue: either the loop sees
        // this item, or this thread sees the close and empties the queue itself.
        if (IsClosed)
        {
            ReleaseAll();
            return false;
        }

        return true;
    }

    /// <summary>Claims the graceful close (then queued as <see cref="ByIdItem.Close"/>); false when one was claimed already.</summary>
    public bool TryRequestClose() => Interlocked.Exchange(ref _closeRequested, 1) == 0;

    /// <summary>True when the caller must schedule the loop's look at this queue (none is pending). Read before the
    /// exchange: with broadcasts in flight most connections are already waiting for the loop, and the loop clears the
    /// flag with an exchange before it looks at the queue, so an item queued before this read is seen either way.</summary>
    public bool TryClaimWakeUp()
        => Volatile.Read(ref _wakeUpPending) == 0 && Interlocked.Exchange(ref _wakeUpPending, 1) == 0;

    /// <summary>On the loop, before it looks at the queue: an enqueue after this point schedules another look.</summary>
    public void WakeUpRan() => Interlocked.Exchange(ref _wakeUpPending, 0);

    /// <summary>On the loop (the only consumer): the next item, the one put back first.</summary>
    public bool TryTake(out ByIdItem item)
    {
        if (_hasLookahead)
        {
            item = _lookahead;
            _lookahead = default;
            Volatile.Write(ref _hasLookahead, false);
            return true;
        }

        return _items.TryDequeue(out item);
    }

    /// <summary>On the loop: <paramref name="item"/>, just taken, is the next one again (in place of a peek).</summary>
    public void PutBack(in ByIdItem item)
    {
        _lookahead = item;
        Volatile.Write(ref _hasLookahead, true);
    }

    /// <summary>On the loop: the kernel took <paramref name="bytes"/>; writers waiting for room wake at half the limit,
    /// as a pipe's writer resumes at its resume threshold.</summary>
    public void OnSent(long bytes, long limit)
    {
        long left = Interlocked.Add(ref _queuedBytes, -bytes);
        if (Volatile.Read(ref _waiterCount) > 0 && left <= limit / 2)
        {
            WakeWaiters();
        }
    }

    /// <summary>No more sends: wakes the writers waiting for room (they see the close) and releases what is queued.</summary>
    public void Close()
    {
        Interlocked.Exchange(ref _closed, 1);
        ReleaseAll();
        WakeWaiters();
    }

    /// <summary>Waits until the queue drops to half of <paramref name="limit"/> or closes.</summary>
    public async ValueTask WaitForRoomAsync(long limit, CancellationToken cancellationToken)
    {
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waitersLock)
        {
            (_waiters ??= []).Add(waiter);
            Interlocked.Increment(ref _waiterCount);
        }

        // Registered first, then checked (the loop subtracts, then looks for waiters): one of the two sees the other.
        if (IsClosed || QueuedBytes <= limit / 2)
        {
            WakeWaiters();
        }

        try
        {
            await waiter.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (!waiter.Task.IsCompleted)
            {
                lock (_waitersLock)
                {
                    if (_waiters!.Remove(waiter))
                    {
                        Interlocked.Decrement(ref _waiterCount);
                    }
                }
            }
        }
    }

    private void WakeWaiters()
    {
        List<TaskCompletionSource>? woken = null;
        lock (_waitersLock)
        {
            if (_waiters is { Count: > 0 })
            {
                woken = [.. _waiters];
                _waiters.Clear();
                Interlocked.Exchange(ref _waiterCount, 0);
            }
        }

        if (woken is not null)
        {
            foreach (TaskCompletionSource waiter in woken)
            {
                waiter.TrySetResult();
            }
        }
    }

    /// <summary>On the loop, once closed: releases the item put back, if any.</summary>
    public void ReleaseLookahead()
    {
        if (_hasLookahead)
        {
            ByIdItem item = _lookahead;
            _lookahead = default;
            Volatile.Write(ref _hasLookahead, false);
            Release(item);
        }
    }

    /// <summary>Empties the queue without sending (any thread; safe beside the loop's own dequeues).</summary>
    private void ReleaseAll()
    {
        while (_items.TryDequeue(out ByIdItem item))
        {
            Release(item);
        }
    }

    private void Release(in ByIdItem item)
    {
        if (item.Message is { } message)
        {
            Interlocked.Add(ref _queuedBytes, -message.Length);
            message.Release();
        }
        else if (item.File is { } file)
        {
            file.Fail(new ConnectionAbortedException("The connection closed before the file written by id was sent."));
        }
    }
}

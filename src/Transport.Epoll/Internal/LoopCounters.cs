namespace Transport.Epoll.Internal;

/// <summary>
/// One loop's running totals. Only the loop's thread writes them, with plain increments (no atomics, no shared cache
/// line), and <see cref="EpollMetrics"/> sums them when a listener asks: counting costs nothing per syscall.
/// The transport runs only in 64-bit processes (<see cref="EpollTransport.IsSupported"/>), where aligned 64-bit loads
/// and stores are single instructions, so a reader on another thread never sees a torn value (ECMA-335 I.12.6.6
/// promises that for native-int-sized fields only, which is why 32-bit processes are refused).
/// Sends made on a flushing thread (see EpollConnection.FlushingThreadSender.cs) go to a second instance per loop through
/// <see cref="AddFlusherSends"/>, the one place that uses atomics: several such threads may count at once.
/// </summary>
internal sealed class LoopCounters
{
    public long Reads;
    public long Writes;
    public long EpollWaits;
    public long Events;
    public long WouldBlock;
    public long PartialWrites;
    public long FlusherWrites;
    public long BytesReceived;
    public long BytesSent;
    public long ByIdMessages;
    public long SendFileCalls;
    public long SendFileBytes;
    public long SendFileOffloads;
    public long ZeroCopySends;
    public long ZeroCopyCompletions;
    public long ZeroCopyCopied;
    public long SpinsFound;
    public long SpinsExpired;

    /// <summary>Counts one flushing thread's sends (thread-safe; only on a loop's flusher instance).</summary>
    public void AddFlusherSends(in SendTally tally)
    {
        if (tally.Writes != 0)
        {
            Interlocked.Add(ref Writes, tally.Writes);
            Interlocked.Add(ref FlusherWrites, tally.Writes);
        }

        if (tally.Bytes != 0)
        {
            Interlocked.Add(ref BytesSent, tally.Bytes);
        }

        if (tally.WouldBlock != 0)
        {
            Interlocked.Add(ref WouldBlock, tally.WouldBlock);
        }

        if (tally.PartialWrites != 0)
        {
            Interlocked.Add(ref PartialWrites, tally.PartialWrites);
        }
    }

    /// <summary>Counts the loop's own sends (plain adds: only the loop's thread writes this instance).</summary>
    public void AddLoopSends(in SendTally tally)
    {
        Writes += tally.Writes;
        BytesSent += tally.Bytes;
        WouldBlock += tally.WouldBlock;
        PartialWrites += tally.PartialWrites;
    }

    public void AddTo(LoopCounters total)
    {
        total.Reads += Volatile.Read(ref Reads);
        total.Writes += Volatile.Read(ref Writes);
        total.EpollWaits += Volatile.Read(ref EpollWaits);
        total.Events += Volatile.Read(ref Events);
        total.WouldBlock += Volatile.Read(ref WouldBlock);
        total.PartialWrites += Volatile.Read(ref PartialWrites);
        total.FlusherWrites += Volatile.Read(ref FlusherWrites);
        total.BytesReceived += Volatile.Read(ref BytesReceived);
        total.BytesSent += Volatile.Read(ref BytesSent);
        total.ByIdMessages += Volatile.Read(ref ByIdMessages);
        total.SendFileCalls += Volatile.Read(ref SendFileCalls);
        total.SendFileBytes += Volatile.Read(ref SendFileBytes);
        total.SendFileOffloads += Volatile.Read(ref SendFileOffloads);
        total.ZeroCopySends += Volatile.Read(ref ZeroCopySends);
        total.ZeroCopyCompletions += Volatile.Read(ref ZeroCopyCompletions);
        total.ZeroCopyCopied += Volatile.Read(ref ZeroCopyCopied);
        total.SpinsFound += Volatile.Read(ref SpinsFound);
        total.SpinsExpired += Volatile.Read(ref SpinsExpired);
    }
}

/// <summary>What one send pass did, counted locally and added to a loop's counters once at its end.</summary>
internal struct SendTally
{
    public long Writes;
    public long Bytes;
    public long WouldBlock;
    public long PartialWrites;
}

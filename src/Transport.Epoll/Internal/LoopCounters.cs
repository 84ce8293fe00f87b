namespace Transport.Epoll.Internal;

/// <summary>
/// One loop's running totals. Only the loop's thread writes them, with plain increments (no atomics, no shared cache
/// line), and <see cref="EpollMetrics"/> sums them when a listener asks: counting costs nothing per syscall.
/// 64-bit reads of these fields are atomic on every platform .NET runs on, so a reader never sees a torn value.
/// </summary>
internal sealed class LoopCounters
{
    public long Reads;
    public long Writes;
    public long EpollWaits;
    public long Events;
    public long WouldBlock;
    public long PartialWrites;
    public long BytesReceived;
    public long BytesSent;
    public long SendFileCalls;
    public long SendFileBytes;
    public long SendFileOffloads;
    public long ZeroCopySends;
    public long ZeroCopyCompletions;
    public long ZeroCopyCopied;

    public void AddTo(LoopCounters total)
    {
        total.Reads += Volatile.Read(ref Reads);
        total.Writes += Volatile.Read(ref Writes);
        total.EpollWaits += Volatile.Read(ref EpollWaits);
        total.Events += Volatile.Read(ref Events);
        total.WouldBlock += Volatile.Read(ref WouldBlock);
        total.PartialWrites += Volatile.Read(ref PartialWrites);
        total.BytesReceived += Volatile.Read(ref BytesReceived);
        total.BytesSent += Volatile.Read(ref BytesSent);
        total.SendFileCalls += Volatile.Read(ref SendFileCalls);
        total.SendFileBytes += Volatile.Read(ref SendFileBytes);
        total.SendFileOffloads += Volatile.Read(ref SendFileOffloads);
        total.ZeroCopySends += Volatile.Read(ref ZeroCopySends);
        total.ZeroCopyCompletions += Volatile.Read(ref ZeroCopyCompletions);
        total.ZeroCopyCopied += Volatile.Read(ref ZeroCopyCopied);
    }
}

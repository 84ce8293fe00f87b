using System.Buffers;

namespace Transport.Epoll.Internal;

/// <summary>
/// A connection's zero-copy sends the kernel has not completed, in the order they were made: the order of the kernel's
/// per-socket counter, one number per successful MSG_ZEROCOPY sendmsg. A completion names a range of that counter, and
/// the kernel documentation (Documentation/networking/msg_zerocopy.rst) does not promise that ranges arrive in order
/// (a retransmission or a teardown can complete a later send first) or one per send (consecutive ones are coalesced).
/// So a send completed ahead of older ones is marked done and its pins are released at once, but the front, whose
/// stream position is the first byte the pipe must keep, only moves past a run of done sends. Owned by the loop thread.
/// </summary>
internal sealed class ZeroCopyInFlight
{
    private Entry[] _entries = new Entry[8];
    private int _head;
    private int _count;
    private uint _nextId;

    /// <summary>Sends not yet completed or held behind an older one.</summary>
    public int Count => _count;

    /// <summary>The first output-stream position the kernel may still read from: nothing from here may be released.</summary>
    public long HeldFrom => _count > 0 ? _entries[_head].StreamPosition : long.MaxValue;

    /// <summary>The kernel's number for the oldest send still held.</summary>
    private uint FrontId => _nextId - (uint)_count;

    /// <summary>A zero-copy sendmsg took <paramref name="streamPosition"/> onwards: keeps the first
    /// <paramref name="count"/> of <paramref name="pins"/> (and clears them there) until its completion.</summary>
    public void Add(long streamPosition, Span<MemoryHandle> pins, int count)
    {
        if (_count == _entries.Length)
        {
            Grow();
        }

        MemoryHandle[] kept = ArrayPool<MemoryHandle>.Shared.Rent(count);
        pins[..count].CopyTo(kept);
        pins[..count].Clear();
        _entries[(_head + _count) % _entries.Length] = new Entry { StreamPosition = streamPosition, Pins = kept, PinCount = count };
        _count++;
        _nextId++;
    }

    /// <summary>
    /// The kernel completed sends <paramref name="first"/> to <paramref name="last"/> (inclusive, on a counter that wraps
    /// at 2^32). Numbers outside what is held (completed already, or never sent) are ignored. Returns whether the front
    /// moved, that is whether the pipe may release more.
    /// </summary>
    public bool Complete(uint first, uint last)
    {
        if (_count == 0)
        {
            return false;
        }

        uint span = last - first;
        uint fromFront = first - FrontId;
        long from;
        if (fromFront < (uint)_count)
        {
            from = fromFront;
        }
        else
        {
            // The range starts before the front (its start was completed before), or lies wholly outside what is held.
            uint beforeFront = FrontId - first;
            if (beforeFront > span)
            {
                return false;
            }

            from = 0;
            span -= beforeFront;
        }

        long to = Math.Min(from + span, _count - 1);
        for (long i = from; i <= to; i++)
        {
            ref Entry entry = ref _entries[(_head + (int)i) % _entries.Length];
            entry.Release();
        }

        bool moved = false;
        while (_count > 0 && _entries[_head].Pins is null)
        {
            _entries[_head] = default;
            _head = (_head + 1) % _entries.Length;
            _count--;
            moved = true;
        }

        return moved;
    }

    /// <summary>Lets go of every send (the connection is gone and its grace period over).</summary>
    public void ReleaseAll()
    {
        for (int i = 0; i < _count; i++)
        {
            ref Entry entry = ref _entries[(_head + i) % _entries.Length];
            entry.Release();
            entry = default;
        }

        _head = 0;
        _count = 0;
    }

    private void Grow()
    {
        var larger = new Entry[_entries.Length * 2];
        for (int i = 0; i < _count; i++)
        {
            larger[i] = _entries[(_head + i) % _entries.Length];
        }

        _entries = larger;
        _head = 0;
    }

    /// <summary>One send: where its bytes start in the output stream, and the pins of its memory (null once completed).</summary>
    private struct Entry
    {
        public long StreamPosition;
        public MemoryHandle[]? Pins;
        public int PinCount;

        public void Release()
        {
            if (Pins is null)
            {
                return;
            }

            for (int i = 0; i < PinCount; i++)
            {
                Pins[i].Dispose();
            }

            ArrayPool<MemoryHandle>.Shared.Return(Pins, clearArray: true);
            Pins = null;
        }
    }
}

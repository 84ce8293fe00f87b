using System.Diagnostics;

namespace Transport.Epoll.Internal;

/// <summary>
/// Maps the 64-bit ids in <c>epoll_event.data</c> to their handlers. An id is a slot (low 24 bits) and that slot's
/// generation (high 40 bits). A file descriptor is reused by the kernel as soon as it is closed; an id is not: the
/// slot's generation moves on when it is freed, so an event, a send or a close carrying an old id finds a different
/// generation and is dropped instead of reaching the fd's new owner (libsock's uuid).
/// </summary>
/// <remarks>
/// No id is ever handed out twice: a slot's generation only grows, and a slot whose 40-bit generation is used up is
/// retired instead of wrapping (a wrapped generation would repeat old ids, and generation 0 of slot 0 is the loop's
/// wake-up id). Retiring is far off: one slot reused by every connection of a server doing a million a second lasts
/// 12 days, and there are 2^24 slots. Freed slots are reused first-in first-out, and only once
/// <see cref="MinimumSlotsBeforeReuse"/> slots exist, which spreads reuse over many slots in the common case.
/// Lookups are lock-free (an array read and an id compare, on every event); adding and removing take a lock, once per
/// connection. The table is process-wide so that ids stay unique across several servers in one process.
/// </remarks>
internal sealed class ConnectionTable
{
    public const int SlotBits = 24;
    public const int MaxSlots = 1 << SlotBits;

    /// <summary>The largest generation: what is left of the 64-bit id above the slot.</summary>
    public const ulong MaxGeneration = (1UL << (64 - SlotBits)) - 1;
    private const ulong SlotMask = MaxSlots - 1;
    private const int MinimumSlotsBeforeReuse = 1024;

    public static ConnectionTable Shared { get; } = new();

    private readonly Lock _lock = new();
    private readonly Queue<int> _freeSlots = new();
    private IEpollHandler?[] _handlers = new IEpollHandler?[256];
    private ulong[] _generations = new ulong[256];
    private readonly ulong _maxGeneration;
    private int _slotCount;
    private int _count;

    public ConnectionTable()
        : this(MaxGeneration)
    {
    }

    /// <summary>Tests only: a table whose slots retire after <paramref name="maxGeneration"/> uses.</summary>
    internal ConnectionTable(ulong maxGeneration)
    {
        _maxGeneration = maxGeneration;
    }

    /// <summary>Slots whose generations are used up; they are never handed out again.</summary>
    public int RetiredSlots { get; private set; }

    /// <summary>Handlers currently in the table.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Gives <paramref name="handler"/> a fresh id and makes it findable by that id.</summary>
    public ulong Add(IEpollHandler handler)
    {
        lock (_lock)
        {
            int slot;
            if (_slotCount < MinimumSlotsBeforeReuse || !_freeSlots.TryDequeue(out slot))
            {
                if (_slotCount == MaxSlots)
                {
                    throw new InvalidOperationException($"The connection table is full ({MaxSlots} handlers).");
                }

                slot = _slotCount++;
                if (slot == _handlers.Length)
                {
                    Grow();
                }
            }

            // Generation 0 is never used, so no id is 0 (0 marks the loop's own eventfd).
            ulong generation = ++_generations[slot];
            ulong id = (generation << SlotBits) | (uint)slot;
            handler.Id = id;
            Volatile.Write(ref _handlers[slot], handler);
            _count++;
            return id;
        }
    }

    /// <summary>Removes the handler with <paramref name="id"/>; a stale id is ignored.</summary>
    public void Remove(ulong id)
    {
        lock (_lock)
        {
            int slot = (int)(id & SlotMask);
            if (slot < _slotCount && _handlers[slot] is { } handler && handler.Id == id)
            {
                Volatile.Write(ref _handlers[slot], null);
                if (_generations[slot] < _maxGeneration)
                {
                    _freeSlots.Enqueue(slot);
                }
                else
                {
                    RetiredSlots++;
                }

                _count--;
            }
        }
    }

    /// <summary>The handler that owns <paramref name="id"/> now, or <see langword="null"/> for a stale or unknown id.</summary>
    public IEpollHandler? Find(ulong id)
    {
        IEpollHandler?[] handlers = Volatile.Read(ref _handlers);
        ulong slot = id & SlotMask;
        if (slot >= (ulong)handlers.Length)
        {
            return null;
        }

        IEpollHandler? handler = Volatile.Read(ref handlers[slot]);
        return handler is not null && handler.Id == id ? handler : null;
    }

    /// <summary>A snapshot of the live handlers, for shutdown.</summary>
    public List<IEpollHandler> Snapshot()
    {
        lock (_lock)
        {
            var list = new List<IEpollHandler>(_count);
            for (int i = 0; i < _slotCount; i++)
            {
                if (_handlers[i] is { } handler)
                {
                    list.Add(handler);
                }
            }

            return list;
        }
    }

    private void Grow()
    {
        Debug.Assert(_lock.IsHeldByCurrentThread);
        int size = Math.Min(_handlers.Length * 2, MaxSlots);
        var handlers = new IEpollHandler?[size];
        Array.Copy(_handlers, handlers, _handlers.Length);
        Array.Resize(ref _generations, size);
        Volatile.Write(ref _handlers, handlers);
    }
}

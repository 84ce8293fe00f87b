namespace Transport.Epoll.Internal;

/// <summary>
/// The loop's side of addressing by id (EpollConnection.ById.cs, docs/ARCHITECTURE.md "Addressing by id").
/// <list type="bullet">
/// <item>The ready list: connections with something queued by id, an intrusive lock-free stack that writers on any
/// thread push onto (the link lives in the connection's <see cref="ByIdQueue"/>; a connection is in it at most once).
/// Only the push onto an empty list schedules work on the loop, so a broadcast to 10,000 connections costs one
/// scheduled item, not one per connection, and allocates nothing.</item>
/// <item>The send sweep: the loop takes the stack whole, turns it around (first queued, first sent) and sends to at
/// most <see cref="SendSweepBudget"/> connections per turn, then goes back to epoll_wait; what is left is finished
/// before anything pushed since. Every connection is thus visited once per round in the same order, and whatever was
/// queued for it since its last visit leaves in one sendmsg: with many broadcasts in flight, one send carries several
/// (each send to a loopback peer costs the peer's wake-up, far more than the bytes).</item>
/// <item>Broadcasts to an endpoint are fanned out here, by the loop, over its own addressable connections: the caller
/// posts one job per loop instead of touching every connection, and the broadcasts posted while the loop was busy are
/// all queued before the sweep sends any, so they share its sendmsg calls.</item>
/// <item>Order: a write by id that a thread makes after its broadcast must reach the connection after it. While any
/// broadcast (or a write routed behind one) is waiting for this loop, writes by id are routed through the loop's work
/// queue too (<see cref="RouteById"/>), which runs in order; when none is, they are queued on the connection directly.</item>
/// </list>
/// </summary>
internal sealed partial class EpollLoop
{
    /// <summary>Connections sent to per turn before the loop looks at its sockets again (bounds a turn at about 5 ms
    /// with a loopback peer; the rest goes next turn, first).</summary>
    internal const int SendSweepBudget = 512;

    private static readonly Action<object?> s_lookAtByIdReady = static state => ((EpollLoop)state!).LookAtByIdReady();
    private static readonly Action<object?> s_runRouted = static state => ((RoutedById)state!).Run();
    private static readonly Action<object?> s_addAddressable = static state => ((EpollConnection)state!).Loop.AddAddressable((EpollConnection)state);

    private EpollConnection? _byIdReady;

    /// <summary>1 while a look at the ready list is scheduled and has not started: one at a time, so the budget holds.</summary>
    private int _lookScheduled;

    /// <summary>Loop only: the rest of the current sweep, in order.</summary>
    private EpollConnection? _sweep;

    /// <summary>Loop only: this loop's addressable connections, for broadcasts to an endpoint.</summary>
    private readonly List<EpollConnection> _addressable = [];

    /// <summary>Broadcasts and routed writes posted to this loop and not yet queued on their connections.</summary>
    private int _byIdRouted;

    /// <summary>Bytes of the broadcasts posted to this loop and not yet fanned out (bounded by MaxWriteBufferSize).</summary>
    private long _broadcastBytesPending;

    /// <summary>True while something by id waits in this loop's work queue: writes by id must queue behind it.</summary>
    public bool ByIdRoutingPending => Volatile.Read(ref _byIdRouted) != 0;

    /// <summary>Any thread: <paramref name="connection"/>'s by-id queue has something new (its wake-up was claimed).</summary>
    public void WakeForById(EpollConnection connection, ByIdQueue queue)
    {
        EpollConnection? head;
        do
        {
            head = Volatile.Read(ref _byIdReady);
            queue.NextReady = head;
        }
        while (Interlocked.CompareExchange(ref _byIdReady, connection, head) != head);

        if (head is null)
        {
            ScheduleLook();
        }
    }

    private void ScheduleLook()
    {
        if (Interlocked.Exchange(ref _lookScheduled, 1) == 0)
        {
            Schedule(s_lookAtByIdReady, this);
        }
    }

    /// <summary>Any thread: runs <paramref name="routed"/> on the loop in order with the broadcasts posted before it.</summary>
    public void RouteById(RoutedById routed)
    {
        Interlocked.Increment(ref _byIdRouted);
        Schedule(s_runRouted, routed);
    }

    /// <summary>Any thread: fans <paramref name="job"/> out over this loop's connections on its endpoint, on the loop.
    /// False (and nothing posted) when the broadcasts already waiting for this loop hold MaxWriteBufferSize bytes: a
    /// broadcaster faster than the loop loses lines, as a connection whose queue is full does.</summary>
    public bool PostBroadcast(BroadcastJob job)
    {
        long limit = Context.MaxWriteBufferSize;
        long pending = Interlocked.Add(ref _broadcastBytesPending, job.Message.Length);
        if (limit > 0 && pending > limit && pending != job.Message.Length)
        {
            Interlocked.Add(ref _broadcastBytesPending, -job.Message.Length);
            return false;
        }

        RouteById(job);
        return true;
    }

    /// <summary>Any thread, as <paramref name="connection"/> becomes addressable: listed for broadcasts once the loop
    /// gets to it, after every broadcast posted before (those do not reach it).</summary>
    public void ListAddressable(EpollConnection connection) => Schedule(s_addAddressable, connection);

    /// <summary>On the loop (or after it stopped), as the connection closes: no broadcast reaches it any more.</summary>
    public void UnlistAddressable(EpollConnection connection)
    {
        int slot = connection.AddressableSlot;
        if (slot < 0)
        {
            return;
        }

        int last = _addressable.Count - 1;
        EpollConnection moved = _addressable[last];
        _addressable[slot] = moved;
        moved.AddressableSlot = slot;
        _addressable.RemoveAt(last);
        connection.AddressableSlot = -1;
    }

    private void AddAddressable(EpollConnection connection)
    {
        // Closed (or revoked) before the loop got here: UnlistAddressable found nothing to remove, so nothing to add.
        if (connection.AddressableSlot >= 0 || connection.FileDescriptor < 0 || connection.ById is not { IsClosed: false })
        {
            return;
        }

        connection.AddressableSlot = _addressable.Count;
        _addressable.Add(connection);
    }

    /// <summary>On the loop: the broadcast's turn has come; queues it on each of this loop's connections on its endpoint.</summary>
    internal void FanOut(BroadcastJob job)
    {
        ByIdMessage message = job.Message;
        List<EpollConnection> connections = _addressable;
        int references = connections.Count;
        int used = 0;
        message.AddReferences(references);
        try
        {
            for (int i = 0; i < connections.Count; i++)
            {
                EpollConnection connection = connections[i];
                if (connection.Id != job.ExceptId && AddressableConnections.IsOn(connection, job.EndPoint)
                    && connection.EnqueueSharedOnLoop(message))
                {
                    used++;
                }
            }
        }
        finally
        {
            // The job's own reference is still held: this cannot be the last.
            message.Release(references - used);
            Interlocked.Add(ref _broadcastBytesPending, -message.Length);
        }
    }

    /// <summary>On the loop: a routed item has been queued; writes by id may go straight to their queues once none is left.</summary>
    internal void RoutedDone() => Interlocked.Decrement(ref _byIdRouted);

    private void LookAtByIdReady()
    {
        // Cleared before the list is read: a push from here on schedules the next look, or finds this one's reschedule.
        Interlocked.Exchange(ref _lookScheduled, 0);
        if (_sweep is null)
        {
            _sweep = Reverse(Interlocked.Exchange(ref _byIdReady, null));
        }

        int budget = SendSweepBudget;
        while (_sweep is { } connection && budget-- > 0)
        {
            ByIdQueue queue = connection.ById!;
            _sweep = queue.NextReady;
            queue.NextReady = null;
            try
            {
                connection.LookAtById();
            }
            catch (Exception ex)
            {
                HandlerFailed(connection, ex);
            }
        }

        // The rest of the sweep, or what was pushed while the sweep ran (a push onto a non-empty list schedules
        // nothing): next turn, after the sockets had their look.
        if (_sweep is not null || Volatile.Read(ref _byIdReady) is not null)
        {
            ScheduleLook();
        }
    }

    /// <summary>The stack holds the last pushed first: reversed, connections are sent to in the order they were queued.</summary>
    private static EpollConnection? Reverse(EpollConnection? head)
    {
        EpollConnection? reversed = null;
        while (head is not null)
        {
            ByIdQueue queue = head.ById!;
            EpollConnection? next = queue.NextReady;
            queue.NextReady = reversed;
            reversed = head;
            head = next;
        }

        return reversed;
    }
}

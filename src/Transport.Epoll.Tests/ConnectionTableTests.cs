using Transport.Epoll.Internal;

namespace Transport.Epoll.Tests;

/// <summary>The id table behind the fd-collision guarantee, on a private table instance.</summary>
public sealed class ConnectionTableTests
{
    private sealed class FakeHandler : IEpollHandler
    {
        public ulong Id { get; set; }

        public EpollLoop Loop => null!;

        public void OnEvents(uint events) => throw new InvalidOperationException("Not a real handler.");

        public void OnLoopStopping() => throw new InvalidOperationException("Not a real handler.");
    }

    [Fact]
    public void A_slot_whose_generation_is_used_up_is_retired_instead_of_wrapping_to_old_ids()
    {
        // Generations of 3 stand for 2^40 - 1: past 1,024 slots a single free slot is reused first-in first-out by one
        // connection after another, so its generation runs out first. A wrap would repeat its ids, and slot 0's
        // generation 0 is id 0, the loops' wake-up id.
        var table = new ConnectionTable(maxGeneration: 3);
        var live = new List<FakeHandler>();
        for (int i = 0; i < 1024; i++)
        {
            live.Add(new FakeHandler());
            table.Add(live[^1]);
        }

        var ids = new HashSet<ulong>(live.Select(h => h.Id));
        table.Remove(live[0].Id);
        for (int i = 0; i < 20; i++)
        {
            var handler = new FakeHandler();
            ulong id = table.Add(handler);
            Assert.NotEqual(0UL, id);
            Assert.True(ids.Add(id), $"Id {id:x} came back after {i} reuses.");
            table.Remove(id);
        }

        Assert.True(table.RetiredSlots > 0);
    }

    [Fact]
    public void Twenty_thousand_ids_from_reused_slots_are_all_different_and_none_is_zero()
    {
        var table = new ConnectionTable();
        var ids = new HashSet<ulong>();
        var slots = new HashSet<ulong>();
        var live = new Queue<FakeHandler>();
        for (int i = 0; i < 20_000; i++)
        {
            var handler = new FakeHandler();
            ulong id = table.Add(handler);
            Assert.NotEqual(0UL, id);
            Assert.Equal(id, handler.Id);
            Assert.True(ids.Add(id), $"Id {id:x} came back.");
            slots.Add(id & (ConnectionTable.MaxSlots - 1));
            live.Enqueue(handler);

            // Keep ~1,500 alive and free the oldest, so slots are reused all the time.
            if (live.Count > 1500)
            {
                table.Remove(live.Dequeue().Id);
            }
        }

        Assert.Equal(1500, table.Count);

        // Distinct ids from distinct slots would prove nothing: the 20,000 ids share about 1,500 slots.
        Assert.True(slots.Count <= 1501, $"{slots.Count} slots for 20,000 ids: slots were not reused, so the test proved nothing.");
    }

    [Fact]
    public void A_stale_id_finds_nothing_even_when_its_slot_has_a_new_owner()
    {
        var table = new ConnectionTable();
        var handlers = Enumerable.Range(0, 2048).Select(_ => new FakeHandler()).ToList();
        handlers.ForEach(h => table.Add(h));

        var old = handlers[100];
        ulong oldId = old.Id;
        table.Remove(oldId);
        Assert.Null(table.Find(oldId));

        // Take slots until the old one is reused.
        FakeHandler? reuser = null;
        for (int i = 0; i < 10_000 && reuser is null; i++)
        {
            var candidate = new FakeHandler();
            table.Add(candidate);
            if ((candidate.Id & (ConnectionTable.MaxSlots - 1)) == (oldId & (ConnectionTable.MaxSlots - 1)))
            {
                reuser = candidate;
            }
        }

        Assert.NotNull(reuser);
        Assert.NotEqual(oldId, reuser.Id);

        // An event or a close carrying the old id is dropped: it neither finds nor removes the slot's new owner.
        Assert.Null(table.Find(oldId));
        int count = table.Count;
        table.Remove(oldId);
        Assert.Equal(count, table.Count);
        Assert.Same(reuser, table.Find(reuser.Id));
    }

    [Fact]
    public void Unknown_ids_find_nothing()
    {
        var table = new ConnectionTable();
        var handler = new FakeHandler();
        table.Add(handler);

        Assert.Null(table.Find(0));
        Assert.Null(table.Find(ulong.MaxValue));
        Assert.Null(table.Find(handler.Id + 1));
        Assert.Null(table.Find(handler.Id ^ (1UL << ConnectionTable.SlotBits)));
        Assert.Same(handler, table.Find(handler.Id));
    }
}

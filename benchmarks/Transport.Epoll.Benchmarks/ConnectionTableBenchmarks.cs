using BenchmarkDotNet.Attributes;
using Transport.Epoll.Internal;

namespace Transport.Epoll.Benchmarks;

/// <summary>The id table: a lookup happens on every epoll event; an add and a remove once per connection.</summary>
[MemoryDiagnoser]
public class ConnectionTableBenchmarks
{
    private readonly ConnectionTable _table = new();
    private readonly FakeHandler[] _handlers = new FakeHandler[10_000];
    private readonly ulong[] _ids = new ulong[10_000];

    [GlobalSetup]
    public void Fill()
    {
        for (int i = 0; i < _handlers.Length; i++)
        {
            _handlers[i] = new FakeHandler();
            _ids[i] = _table.Add(_handlers[i]);
        }
    }

    /// <summary>What the loop does per event: find the handler by the id from epoll_event.data.</summary>
    [Benchmark(OperationsPerInvoke = 10_000)]
    public int FindLive()
    {
        int found = 0;
        foreach (ulong id in _ids)
        {
            if (_table.Find(id) is not null)
            {
                found++;
            }
        }

        return found;
    }

    /// <summary>A connection's life in the table: added at accept, removed at close; the slot's generation moves on.</summary>
    [Benchmark]
    public ulong AddAndRemove()
    {
        FakeHandler handler = _handlers[0];
        ulong old = handler.Id;
        ulong id = _table.Add(handler);
        _table.Remove(id);
        handler.Id = old;
        return id;
    }

    private sealed class FakeHandler : IEpollHandler
    {
        public ulong Id { get; set; }

        public EpollLoop Loop => throw new NotSupportedException();

        public void OnEvents(uint events)
        {
        }

        public void OnLoopStopping()
        {
        }
    }
}

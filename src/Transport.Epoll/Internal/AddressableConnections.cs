using System.Collections.Concurrent;
using System.Net;

namespace Transport.Epoll.Internal;

/// <summary>
/// The addressable connections of one transport (one factory's loops), for enumeration and broadcast to an endpoint.
/// Lookups by id go through the <see cref="ConnectionTable"/> instead (an array read and a generation compare); this map
/// changes once when a connection opts in and once when it closes. Beside it, per endpoint, how many of them each loop
/// has: a broadcast to an endpoint is posted only to the loops that have some, and says how many it is for without
/// looking at them (the loops fan it out, EpollLoop.ById.cs).
/// </summary>
internal sealed class AddressableConnections
{
    private readonly ConcurrentDictionary<ulong, EpollConnection> _connections = new();
    private readonly ConcurrentDictionary<EndPoint, LoopCounts> _onEndPoint = new();

    public int Count => _connections.Count;

    public void Add(EpollConnection connection)
    {
        _connections[connection.Id] = connection;
        ForEachEndPoint(connection, +1);
    }

    public void Remove(EpollConnection connection)
    {
        if (_connections.TryRemove(new KeyValuePair<ulong, EpollConnection>(connection.Id, connection)))
        {
            ForEachEndPoint(connection, -1);
        }
    }

    /// <summary>The live entries, to enumerate (a connection closing meanwhile may still be listed once: callers check
    /// it). Enumerating a concurrent dictionary takes no lock and copies nothing.</summary>
    public ConcurrentDictionary<ulong, EpollConnection> Map => _connections;

    /// <summary>Per loop, how many addressable connections are on <paramref name="endPoint"/>; null when none ever was.</summary>
    public LoopCounts? On(EndPoint endPoint) => _onEndPoint.TryGetValue(endPoint, out LoopCounts? counts) ? counts : null;

    /// <summary>Whether <paramref name="connection"/> was accepted on <paramref name="endPoint"/>: the listener's endpoint
    /// as bound (a wildcard stays a wildcard) or the address the peer reached.</summary>
    public static bool IsOn(EpollConnection connection, EndPoint endPoint)
        => ReferenceEquals(endPoint, connection.ListenEndPoint) || endPoint.Equals(connection.ListenEndPoint) || endPoint.Equals(connection.LocalEndPoint);

    private void ForEachEndPoint(EpollConnection connection, int delta)
    {
        EndPoint? listen = connection.ListenEndPoint;
        EndPoint? local = connection.LocalEndPoint;
        if (listen is not null)
        {
            Counts(listen).Add(connection.Loop, delta);
        }

        if (local is not null && !local.Equals(listen))
        {
            Counts(local).Add(connection.Loop, delta);
        }
    }

    private LoopCounts Counts(EndPoint endPoint) => _onEndPoint.GetOrAdd(endPoint, static _ => new LoopCounts());

    /// <summary>Addressable connections on one endpoint, per loop (loops are few and fixed: a small array, grown under a
    /// lock the first time a loop shows up).</summary>
    internal sealed class LoopCounts
    {
        private readonly Lock _grow = new();
        private Entry[] _entries = [];

        public ReadOnlySpan<Entry> Entries => Volatile.Read(ref _entries);

        public void Add(EpollLoop loop, int delta)
        {
            Entry[] entries = Volatile.Read(ref _entries);
            foreach (Entry entry in entries)
            {
                if (entry.Loop == loop)
                {
                    entry.Add(delta);
                    return;
                }
            }

            lock (_grow)
            {
                foreach (Entry entry in _entries)
                {
                    if (entry.Loop == loop)
                    {
                        entry.Add(delta);
                        return;
                    }
                }

                var added = new Entry(loop);
                added.Add(delta);
                Volatile.Write(ref _entries, [.. _entries, added]);
            }
        }

        internal sealed class Entry(EpollLoop loop)
        {
            private int _count;

            public EpollLoop Loop { get; } = loop;

            public int Count => Volatile.Read(ref _count);

            public void Add(int delta) => Interlocked.Add(ref _count, delta);
        }
    }
}

using System.Collections.Concurrent;
using System.Net;

namespace Transport.Epoll.Internal;

/// <summary>
/// The addressable connections of one transport (one factory's loops), for enumeration and broadcast to an endpoint.
/// Lookups by id go through the <see cref="ConnectionTable"/> instead (an array read and a generation compare); this map
/// changes once when a connection opts in and once when it closes.
/// </summary>
internal sealed class AddressableConnections
{
    private readonly ConcurrentDictionary<ulong, EpollConnection> _connections = new();

    public int Count => _connections.Count;

    public void Add(EpollConnection connection) => _connections[connection.Id] = connection;

    public void Remove(EpollConnection connection) => _connections.TryRemove(new KeyValuePair<ulong, EpollConnection>(connection.Id, connection));

    /// <summary>The live entries, to enumerate (a connection closing meanwhile may still be listed once: callers check
    /// it). Enumerating a concurrent dictionary takes no lock and copies nothing.</summary>
    public ConcurrentDictionary<ulong, EpollConnection> Map => _connections;

    /// <summary>Whether <paramref name="connection"/> was accepted on <paramref name="endPoint"/>: the listener's endpoint
    /// as bound (a wildcard stays a wildcard) or the address the peer reached.</summary>
    public static bool IsOn(EpollConnection connection, EndPoint endPoint)
        => endPoint.Equals(connection.ListenEndPoint) || endPoint.Equals(connection.LocalEndPoint);
}

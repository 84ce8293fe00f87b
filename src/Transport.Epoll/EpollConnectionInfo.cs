using System.Net;

namespace Transport.Epoll;

/// <summary>A snapshot of what the transport knows about a live addressable connection (<see cref="IEpollConnections.TryGetInfo"/>).</summary>
public sealed class EpollConnectionInfo
{
    internal EpollConnectionInfo(ulong id, EndPoint? localEndPoint, EndPoint? remoteEndPoint, EndPoint? listenEndPoint, int loopIndex, EpollConnectionState state, EpollConnectionDirection direction, long queuedBytes)
    {
        Id = id;
        LocalEndPoint = localEndPoint;
        RemoteEndPoint = remoteEndPoint;
        ListenEndPoint = listenEndPoint;
        LoopIndex = loopIndex;
        State = state;
        Direction = direction;
        QueuedBytes = queuedBytes;
    }

    /// <summary>The connection's id (<see cref="IEpollConnectionFeature.Id"/>).</summary>
    public ulong Id { get; }

    /// <summary>The address the peer reached (for a wildcard listener, the one it actually connected to).</summary>
    public EndPoint? LocalEndPoint { get; }

    /// <summary>The peer's address.</summary>
    public EndPoint? RemoteEndPoint { get; }

    /// <summary>The endpoint of the listener that accepted the connection, as it was bound (a wildcard stays a wildcard);
    /// what <see cref="IEpollConnections.Broadcast(EndPoint, ReadOnlySpan{byte}, ulong)"/> matches. Null for an outbound connection.</summary>
    public EndPoint? ListenEndPoint { get; }

    /// <summary>The index of the event loop (the <c>epoll-N</c> thread) that owns the connection.</summary>
    public int LoopIndex { get; }

    /// <summary>Open, or closing (its output has ended).</summary>
    public EpollConnectionState State { get; }

    /// <summary>Accepted here or connected from here.</summary>
    public EpollConnectionDirection Direction { get; }

    /// <summary>Bytes written by id that the kernel has not taken yet, when the snapshot was taken.</summary>
    public long QueuedBytes { get; }
}

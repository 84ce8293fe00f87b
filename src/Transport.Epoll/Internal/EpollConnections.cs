using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll.Internal;

/// <summary>
/// <see cref="IEpollConnections"/> over one transport's connections: an id is looked up in the connection table (an
/// array read and a generation compare, lock-free), and only a connection of this transport that opted in answers.
/// </summary>
internal sealed class EpollConnections(EpollTransportFactory factory) : IEpollConnections
{
    private readonly TransportContext _context = factory.Context;
    private readonly ConnectionTable _table = ConnectionTable.Shared;

    public EpollWriteResult Write(ulong id, ReadOnlySpan<byte> message)
        => Find(id)?.WriteById(message) ?? EpollWriteResult.Gone;

    public ValueTask<EpollWriteResult> WriteAsync(ulong id, ReadOnlyMemory<byte> message, CancellationToken cancellationToken = default)
        => Find(id) is { } connection ? connection.WriteByIdAsync(message, cancellationToken) : ValueTask.FromResult(EpollWriteResult.Gone);

    public Task<EpollWriteResult> SendFileAsync(ulong id, SafeFileHandle file, long offset, long count, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(file);
        return Find(id) is { } connection ? connection.SendFileByIdAsync(file, offset, count, cancellationToken) : Task.FromResult(EpollWriteResult.Gone);
    }

    public bool Close(ulong id) => Find(id)?.CloseById() ?? false;

    public bool Abort(ulong id) => Find(id)?.AbortById() ?? false;

    public bool TryGetInfo(ulong id, [NotNullWhen(true)] out EpollConnectionInfo? info)
    {
        info = Find(id)?.GetInfo();
        return info is not null;
    }

    public IReadOnlyList<ulong> GetIds(EndPoint? endPoint = null)
    {
        var ids = new List<ulong>();
        foreach (KeyValuePair<ulong, EpollConnection> pair in _context.Addressable.Map)
        {
            EpollConnection connection = pair.Value;
            if (connection.FileDescriptor >= 0 && (endPoint is null || AddressableConnections.IsOn(connection, endPoint)))
            {
                ids.Add(pair.Key);
            }
        }

        return ids;
    }

    public int Broadcast(ReadOnlySpan<ulong> ids, ReadOnlySpan<byte> message)
    {
        using var copies = new LoopCopies(_context.Options.ThreadCount);
        int queued = 0;
        foreach (ulong id in ids)
        {
            if (Find(id) is { } connection && connection.EnqueueShared(copies.For(connection.LoopIndex, message)))
            {
                queued++;
            }
        }

        _context.Metrics.ByIdBroadcast();
        return queued;
    }

    public int Broadcast(EndPoint endPoint, ReadOnlySpan<byte> message, ulong exceptId = 0)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        _context.Metrics.ByIdBroadcast();
        if (_context.Addressable.On(endPoint) is not { } counts)
        {
            return 0;
        }

        // One job per loop with connections on the endpoint; each loop queues it on its own connections, in order with
        // what was written by id before this call (EpollLoop.ById.cs).
        EpollConnection? excepted = exceptId != 0 ? Find(exceptId) : null;
        int queued = 0;
        foreach (AddressableConnections.LoopCounts.Entry entry in counts.Entries)
        {
            int count = entry.Count;
            if (count <= 0)
            {
                continue;
            }

            var job = BroadcastJob.Rent(entry.Loop, ByIdMessage.Rent(message), endPoint, exceptId);
            if (!entry.Loop.PostBroadcast(job))
            {
                job.Discard();
                _context.Metrics.ByIdFull();
                continue;
            }

            queued += count;
            if (excepted is not null && excepted.Loop == entry.Loop && AddressableConnections.IsOn(excepted, endPoint))
            {
                queued--;
            }
        }

        return queued;
    }

    /// <summary>An id of this transport that opted in (and was not revoked: its Transport replaced); null for a stale,
    /// unknown or foreign one.</summary>
    private EpollConnection? Find(ulong id)
        => _table.Find(id) is EpollConnection connection && ReferenceEquals(connection.Loop.Context, _context) && connection.ById is { IsRevoked: false }
            ? connection
            : null;

    /// <summary>
    /// A broadcast's copies: one per loop, made when the loop's first connection takes it, shared by reference among
    /// that loop's connections (their loop thread is then the only one that touches it while sending). The broadcast's
    /// own reference is dropped at the end; the last connection to send it returns it to the pool.
    /// </summary>
    private readonly struct LoopCopies(int loops) : IDisposable
    {
        private readonly ByIdMessage?[] _copies = Rent(loops);
        private readonly int _loops = loops;

        public ByIdMessage For(int loop, ReadOnlySpan<byte> message) => _copies[loop] ??= ByIdMessage.Rent(message);

        public void Dispose()
        {
            for (int i = 0; i < _loops; i++)
            {
                _copies[i]?.Release();
                _copies[i] = null;
            }

            ArrayPool<ByIdMessage?>.Shared.Return(_copies);
        }

        private static ByIdMessage?[] Rent(int loops)
        {
            ByIdMessage?[] copies = ArrayPool<ByIdMessage?>.Shared.Rent(loops);
            Array.Clear(copies, 0, loops);
            return copies;
        }
    }
}

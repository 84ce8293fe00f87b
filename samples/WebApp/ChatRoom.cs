using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll;

namespace WebApp;

/// <summary>What the chat port (<see cref="ChatConnectionHandler"/>) needs from "the other connections": write to one
/// by id, write to all but one, close one, list them. Two ways to have it, one per transport.</summary>
public abstract class ChatRoom
{
    /// <summary>Joins <paramref name="connection"/> and sends it <paramref name="greeting"/> (its <c>id</c> line) before
    /// anything another member writes to it; once this returns the others can reach it.</summary>
    public abstract ValueTask JoinAsync(ConnectionContext connection, ReadOnlyMemory<byte> greeting);

    /// <summary>The handler is done with <paramref name="id"/> (its connection is closing).</summary>
    public abstract void Leave(ulong id);

    /// <summary>The id a connection has or will have in the room, for its <c>id</c> line.</summary>
    public abstract ulong IdOf(ConnectionContext connection);

    /// <summary>Writes <paramref name="line"/> to <paramref name="id"/>; false when it is not in the room.</summary>
    public abstract ValueTask<bool> SendAsync(ulong id, ReadOnlyMemory<byte> line, CancellationToken cancellationToken);

    /// <summary>Writes <paramref name="line"/> to every member but <paramref name="sender"/>.</summary>
    public abstract ValueTask BroadcastAsync(ulong sender, ReadOnlyMemory<byte> line, CancellationToken cancellationToken);

    /// <summary>Closes <paramref name="id"/> after what was written to it; false when it is not in the room.</summary>
    public abstract bool Kick(ulong id);

    /// <summary>The members now.</summary>
    public abstract IReadOnlyList<ulong> Members();

    /// <summary>Writes a reply from a member's own handler; with the Sockets room it must take the member's lock.</summary>
    public abstract ValueTask ReplyAsync(ulong id, PipeWriter output, ReadOnlyMemory<byte> reply, CancellationToken cancellationToken);
}

/// <summary>
/// The chat on the epoll transport: connections are addressed by id through <see cref="IEpollConnections"/>. A line
/// written by id is queued on its connection and sent by its loop between the handler's own flushes; a broadcast is
/// copied once per loop. No lock, no dictionary of writers: the transport keeps the table.
/// </summary>
public sealed class EpollChatRoom(IEpollConnections connections) : ChatRoom
{
    // The chat port's listeners as bound: one, or two for localhost (127.0.0.1 and [::1]).
    private readonly ConcurrentDictionary<EndPoint, byte> _endPoints = new();

    public override ulong IdOf(ConnectionContext connection) => connection.Features.Get<IEpollConnectionFeature>()!.Id;

    public override ValueTask JoinAsync(ConnectionContext connection, ReadOnlyMemory<byte> greeting)
    {
        // The greeting is queued by id as the connection becomes addressable: nothing written by id goes before it, and
        // the client sees it only once the others can reach it.
        ulong id = connection.MakeAddressable(greeting.Span);
        if (connections.TryGetInfo(id, out EpollConnectionInfo? info) && info.ListenEndPoint is { } endPoint)
        {
            _endPoints.TryAdd(endPoint, 0);
        }

        return ValueTask.CompletedTask;
    }

    public override void Leave(ulong id)
    {
        // The transport forgets the id when the connection closes.
    }

    public override async ValueTask<bool> SendAsync(ulong id, ReadOnlyMemory<byte> line, CancellationToken cancellationToken)
        => await connections.WriteAsync(id, line, cancellationToken).ConfigureAwait(false) == EpollWriteResult.Written;

    public override ValueTask BroadcastAsync(ulong sender, ReadOnlyMemory<byte> line, CancellationToken cancellationToken)
    {
        foreach (EndPoint endPoint in _endPoints.Keys)
        {
            // A member whose queue is full (a reader far behind) misses the line rather than holding up the room.
            connections.Broadcast(endPoint, line.Span, exceptId: sender);
        }

        return ValueTask.CompletedTask;
    }

    public override bool Kick(ulong id) => connections.Close(id);

    public override IReadOnlyList<ulong> Members() => [.. _endPoints.Keys.SelectMany(endPoint => connections.GetIds(endPoint))];

    public override async ValueTask ReplyAsync(ulong id, PipeWriter output, ReadOnlyMemory<byte> reply, CancellationToken cancellationToken)
        => await output.WriteAsync(reply, cancellationToken).ConfigureAwait(false);
}

/// <summary>
/// The chat on the Sockets transport, which has no ids: the obvious equivalent, a dictionary of the members'
/// <see cref="PipeWriter"/>s and a lock per member around every write (the member's own handler writes to the same
/// pipe). Ids come from a counter and are never reused.
/// </summary>
public sealed class SocketsChatRoom : ChatRoom
{
    private readonly ConcurrentDictionary<ulong, Member> _members = new();
    private readonly ConditionalWeakTable<ConnectionContext, object> _ids = new();
    private long _nextId;

    public override ulong IdOf(ConnectionContext connection)
        => (ulong)(long)_ids.GetValue(connection, _ => Interlocked.Increment(ref _nextId));

    public override async ValueTask JoinAsync(ConnectionContext connection, ReadOnlyMemory<byte> greeting)
    {
        // The member is listed with its lock held: whoever writes to it waits until the greeting is written.
        ulong id = IdOf(connection);
        var member = new Member(connection);
        _members[id] = member;
        try
        {
            await connection.Transport.Output.WriteAsync(greeting).ConfigureAwait(false);
        }
        finally
        {
            member.Lock.Release();
        }
    }

    public override void Leave(ulong id)
    {
        _members.TryRemove(id, out _);
    }

    public override async ValueTask<bool> SendAsync(ulong id, ReadOnlyMemory<byte> line, CancellationToken cancellationToken)
        => _members.TryGetValue(id, out Member? member) && await member.WriteAsync(line, cancellationToken).ConfigureAwait(false);

    public override async ValueTask BroadcastAsync(ulong sender, ReadOnlyMemory<byte> line, CancellationToken cancellationToken)
    {
        foreach (KeyValuePair<ulong, Member> pair in _members)
        {
            if (pair.Key != sender)
            {
                await pair.Value.WriteAsync(line, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    public override bool Kick(ulong id)
    {
        if (!_members.TryRemove(id, out Member? member))
        {
            return false;
        }

        // Its handler stops reading and completes the output: what was written goes out, then the FIN.
        member.Connection.Transport.Input.CancelPendingRead();
        return true;
    }

    public override IReadOnlyList<ulong> Members() => [.. _members.Keys];

    public override async ValueTask ReplyAsync(ulong id, PipeWriter output, ReadOnlyMemory<byte> reply, CancellationToken cancellationToken)
    {
        if (_members.TryGetValue(id, out Member? member))
        {
            await member.WriteAsync(reply, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await output.WriteAsync(reply, cancellationToken).ConfigureAwait(false);
        }
    }

    private sealed class Member(ConnectionContext connection)
    {
        public ConnectionContext Connection { get; } = connection;

        /// <summary>Taken at creation: released once the greeting is written (JoinAsync).</summary>
        public SemaphoreSlim Lock { get; } = new(0, 1);

        public async ValueTask<bool> WriteAsync(ReadOnlyMemory<byte> line, CancellationToken cancellationToken)
        {
            await Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                FlushResult result = await Connection.Transport.Output.WriteAsync(line, cancellationToken).ConfigureAwait(false);
                return !result.IsCompleted;
            }
            catch (Exception e) when (e is InvalidOperationException or ConnectionAbortedException or IOException)
            {
                // The member is leaving (its output completed): the line is not delivered.
                return false;
            }
            finally
            {
                Lock.Release();
            }
        }
    }
}

using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Internal;

namespace Transport.Epoll;

/// <summary>Opting a connection in to addressing by id (<see cref="IEpollConnections"/>).</summary>
public static class EpollConnectionAddressing
{
    /// <summary>
    /// Makes <paramref name="connection"/> addressable through <see cref="IEpollConnections"/>: from now until it closes,
    /// code anywhere can write to it, send it a file, or close it by its id. Call it from a raw <c>ConnectionHandler</c>
    /// that owns the byte stream; calling it again returns the same id.
    /// </summary>
    /// <remarks>
    /// HTTP connections are never addressable: nothing on Kestrel's HTTP path calls this, and HTTP request code cannot
    /// (it never sees the <see cref="ConnectionContext"/>), so every call by the id of an HTTP connection answers
    /// <see cref="EpollWriteResult.Gone"/>. Do not call it from connection middleware in front of Kestrel's HTTP
    /// processing: Kestrel marks HTTP connections with no feature the transport could check, and bytes written by id
    /// would break HTTP's framing. If the connection's <c>Transport</c> is replaced later (TLS), it stops being
    /// addressable.
    /// </remarks>
    /// <returns>The connection's id.</returns>
    /// <exception cref="InvalidOperationException">The connection is not the epoll transport's; its
    /// <c>Transport</c> was replaced (TLS: bytes written by id would bypass the encryption).</exception>
    public static ulong MakeAddressable(this ConnectionContext connection)
        => MakeAddressable(connection, default);

    /// <summary>
    /// As <see cref="MakeAddressable(ConnectionContext)"/>, and queues <paramref name="firstMessage"/> by id before the
    /// connection becomes addressable: whatever others write to it by id goes after it (a greeting such as the sample
    /// chat's <c>id</c> line, which must come first and must not go out before others can reach the connection).
    /// Ignored when the connection was addressable already.
    /// </summary>
    /// <returns>The connection's id.</returns>
    /// <exception cref="InvalidOperationException">As for <see cref="MakeAddressable(ConnectionContext)"/>.</exception>
    public static ulong MakeAddressable(this ConnectionContext connection, ReadOnlySpan<byte> firstMessage)
    {
        ArgumentNullException.ThrowIfNull(connection);
        if (connection.Features.Get<IEpollConnectionFeature>() is not EpollConnection epoll)
        {
            throw new InvalidOperationException("Only connections of the epoll transport can be addressed by id.");
        }

        return epoll.MakeAddressable(firstMessage);
    }
}

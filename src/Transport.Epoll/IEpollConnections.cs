using System.Diagnostics.CodeAnalysis;
using System.Net;
using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll;

/// <summary>
/// Connections addressed by their id from any thread (a timer, another connection's handler, a background job): write,
/// send a file, broadcast, close. An id (<see cref="IEpollConnectionFeature.Id"/>) is never reused in the life of the
/// process, unlike a file descriptor, so a stale id fails (<see cref="EpollWriteResult.Gone"/>) instead of reaching
/// whichever connection the kernel gave the old descriptor to. Get it from dependency injection
/// (<c>AddEpollTransport</c> and <c>UseEpollTransport</c> register it).
/// </summary>
/// <remarks>
/// <para>
/// Only connections that opted in are addressable: a raw <c>ConnectionHandler</c> calls
/// <see cref="EpollConnectionAddressing.MakeAddressable(Microsoft.AspNetCore.Connections.ConnectionContext)"/>. HTTP connections never are (bytes written by id would break
/// HTTP's framing), nor connections whose <c>Transport</c> was replaced (TLS: the bytes would bypass the encryption).
/// Every call on an id that is not addressable answers as for a closed one: <see cref="EpollWriteResult.Gone"/>.
/// </para>
/// <para>
/// Framing: each message written by id goes out whole, never interleaved with another message written by id nor with
/// the connection's own output. The unit of the handler's output is its flush: messages by id go out only between two
/// of the handler's flushes (bytes it has advanced but not flushed wait behind them). Messages written from one thread
/// to one connection go out in the order written; messages from different threads in some order.
/// </para>
/// <para>
/// Memory: each message is copied once into pooled memory (a broadcast once per event loop, shared by the loop's
/// connections) and queued on its connection; the connection's loop sends queued messages at the end of its turn,
/// several per <c>sendmsg</c>. What is queued by id counts against
/// <see cref="EpollTransportOptions.MaxWriteBufferSize"/>: past it a write answers <see cref="EpollWriteResult.Full"/>.
/// <see cref="EpollWriteResult.Written"/> means queued: like any bytes not yet sent, they are lost if the connection is
/// reset or aborted first. A graceful close (the handler's own, <see cref="Close"/>, or the host's graceful stop once
/// handlers return) sends what is queued before the FIN.
/// </para>
/// </remarks>
public interface IEpollConnections
{
    /// <summary>Queues a copy of <paramref name="message"/> on connection <paramref name="id"/>.</summary>
    /// <returns><see cref="EpollWriteResult.Written"/>, or why nothing was queued.</returns>
    EpollWriteResult Write(ulong id, ReadOnlySpan<byte> message);

    /// <summary>As <see cref="Write"/>, but waits while the connection is <see cref="EpollWriteResult.Full"/> (until its
    /// peer has read enough for the queue to drop to half the limit, or it closes).</summary>
    /// <returns><see cref="EpollWriteResult.Written"/> or <see cref="EpollWriteResult.Gone"/>.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired while waiting; nothing was queued.</exception>
    ValueTask<EpollWriteResult> WriteAsync(ulong id, ReadOnlyMemory<byte> message, CancellationToken cancellationToken = default);

    /// <summary>
    /// Sends <paramref name="count"/> bytes of <paramref name="file"/> from <paramref name="offset"/> on connection
    /// <paramref name="id"/> with sendfile(2), in order with the messages written by id (everything queued before goes
    /// first, the file is never interleaved). The caller keeps the handle; it must stay open until the task ends.
    /// </summary>
    /// <returns><see cref="EpollWriteResult.Written"/> once the whole range is with the kernel, or <see cref="EpollWriteResult.Gone"/>.</returns>
    /// <exception cref="NotSupportedException">sendfile(2) cannot be used (the handle is not a regular file, the option is
    /// off, or the kernel refused it): nothing of the file was sent.</exception>
    /// <exception cref="OperationCanceledException">Cancelled before any byte of the file went out.</exception>
    Task<EpollWriteResult> SendFileAsync(ulong id, SafeFileHandle file, long offset, long count, CancellationToken cancellationToken = default);

    /// <summary>
    /// Closes connection <paramref name="id"/> gracefully: what was queued by id before this call and what its handler
    /// flushed go out first, then the connection closes (a FIN; a RST if the peer's unread bytes are still in the
    /// kernel, close(2)). Its handler's input completes. A peer that never reads keeps it open: <see cref="Abort"/> then.
    /// </summary>
    /// <returns>False when the id is not live and addressable.</returns>
    bool Close(ulong id);

    /// <summary>Resets connection <paramref name="id"/> now (a RST); whatever is queued is dropped.</summary>
    /// <returns>False when the id is not live and addressable.</returns>
    bool Abort(ulong id);

    /// <summary>What is known about a live addressable connection.</summary>
    bool TryGetInfo(ulong id, [NotNullWhen(true)] out EpollConnectionInfo? info);

    /// <summary>A snapshot of the live addressable ids, all of them or those accepted on <paramref name="endPoint"/>
    /// (matched as in <see cref="Broadcast(EndPoint, ReadOnlySpan{byte}, ulong)"/>).</summary>
    IReadOnlyList<ulong> GetIds(EndPoint? endPoint = null);

    /// <summary>
    /// Queues <paramref name="message"/> on every connection in <paramref name="ids"/>, copied once per event loop and
    /// shared by that loop's connections. Ids that are gone or full are skipped.
    /// </summary>
    /// <returns>How many connections it was queued on.</returns>
    int Broadcast(ReadOnlySpan<ulong> ids, ReadOnlySpan<byte> message);

    /// <summary>
    /// Queues <paramref name="message"/> on every addressable connection accepted on <paramref name="endPoint"/> (the
    /// listener's endpoint as bound, see <see cref="EpollConnectionInfo.ListenEndPoint"/>, or the connection's local
    /// endpoint), except <paramref name="exceptId"/>; copied once per event loop. Each loop queues it on its own
    /// connections, after everything this thread wrote by id before the call and before anything it writes after;
    /// a connection whose queue is full by then is skipped (counted in <c>epoll.byid.refused</c>), and so is a loop
    /// that still has <c>MaxWriteBufferSize</c> bytes of earlier broadcasts to queue.
    /// </summary>
    /// <returns>How many addressable connections of the endpoint it is for (those of a loop that refused it left out).</returns>
    int Broadcast(EndPoint endPoint, ReadOnlySpan<byte> message, ulong exceptId = 0);
}

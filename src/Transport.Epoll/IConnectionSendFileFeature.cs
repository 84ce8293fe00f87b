using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll;

/// <summary>
/// Sends a range of a file on a connection of the epoll transport. Get it from the connection's features
/// (<c>connection.Features.Get&lt;IConnectionSendFileFeature&gt;()</c>, or an HTTP request's features, which fall back
/// to the connection's).
/// </summary>
/// <remarks>
/// <para>Order is kept: everything advanced on the connection's <c>Output</c> before the call goes out first, then the
/// file range, then what is written after the returned task completes. Do not write to <c>Output</c> while the call is
/// in flight (the same rule as for any <c>PipeWriter</c>: one writer at a time).</para>
/// <para>The fast path is <c>sendfile(2)</c> on the connection's loop: the file's pages go from the page cache to the
/// socket without passing through user space. A range not in the page cache is sent from a thread-pool thread, so a
/// cold disk never stalls the loop's other connections. The call falls back, by itself, to reading the file in chunks
/// into the pipe when <c>sendfile</c> cannot be used: the handle is not a regular file, the kernel refuses the file
/// (<c>EINVAL</c>, <c>ENOSYS</c>), <see cref="EpollTransportOptions.EnableSendFile"/> is off, or the connection's
/// pipe was replaced (TLS, connection logging). The result is the same bytes; only the metrics tell the paths apart.</para>
/// </remarks>
public interface IConnectionSendFileFeature
{
    /// <summary>
    /// True when a <see cref="SendFileAsync"/> on this connection, now, would use <c>sendfile(2)</c> (for a regular
    /// file the kernel accepts): the option is on and the connection's transport pipe is the transport's own.
    /// </summary>
    bool IsSendFileAvailable { get; }

    /// <summary>
    /// Sends <paramref name="count"/> bytes of <paramref name="file"/> from <paramref name="offset"/>. The caller keeps
    /// the handle (it is not closed, and one open file may go to many connections at once); it must stay open until
    /// the task completes.
    /// </summary>
    /// <returns>A task that completes when the whole range is with the kernel.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled. Before the first
    /// byte was sent the connection is untouched; after it, the connection is aborted (a peer cannot be told where a
    /// range stopped).</exception>
    /// <exception cref="IOException">The file ended before <paramref name="offset"/> + <paramref name="count"/> (it
    /// shrank under the call), or could not be read: the connection is aborted rather than sent short.</exception>
    /// <exception cref="Microsoft.AspNetCore.Connections.ConnectionAbortedException">The connection closed first.</exception>
    Task SendFileAsync(SafeFileHandle file, long offset, long count, CancellationToken cancellationToken = default);
}

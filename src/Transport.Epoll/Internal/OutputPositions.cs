using System.Buffers;
using System.IO.Pipelines;

namespace Transport.Epoll.Internal;

/// <summary>
/// Where a connection's send side stands in its output stream: every byte the application ever flushed, numbered from
/// 0. The output pipe's read buffer always starts at <see cref="Released"/> (what the pipe gave back so far); bytes up to
/// <see cref="Sent"/> are with the kernel, or were skipped (a file's placeholders); the bytes of zero-copy sends the
/// kernel has not completed are held in the pipe from their own position, so the pipe releases only up to the smaller
/// of <see cref="Sent"/> and that held-from position. A file range sent with SendFileAsync has a position of its own in
/// the same numbering (<see cref="SendFileJob.StreamPosition"/>). A field of its connection, used by the thread that
/// runs the send (the loop, or a flushing thread inside its gate).
/// </summary>
internal struct OutputPositions
{
    /// <summary>The stream position of the first byte the pipe still holds.</summary>
    public long Released { get; private set; }

    /// <summary>The stream position of the next byte to send.</summary>
    public long Sent { get; private set; }

    /// <summary>The stream position just past <paramref name="buffer"/> (a read of the pipe, starting at <see cref="Released"/>).</summary>
    public readonly long EndOf(in ReadOnlySequence<byte> buffer) => Released + buffer.Length;

    /// <summary>How many bytes of <paramref name="buffer"/> are not sent yet.</summary>
    public readonly long UnsentIn(in ReadOnlySequence<byte> buffer) => buffer.Length - (Sent - Released);

    /// <summary>The next bytes to send from <paramref name="buffer"/>: up to the stream position <paramref name="limit"/>,
    /// at most <paramref name="room"/> of them.</summary>
    public readonly ReadOnlySequence<byte> NextToSend(in ReadOnlySequence<byte> buffer, long limit, long room)
        => buffer.Slice(Sent - Released, Math.Min(limit - Sent, room));

    /// <summary>The kernel took <paramref name="bytes"/> more.</summary>
    public void AddSent(long bytes) => Sent += bytes;

    /// <summary>Bytes up to <paramref name="position"/> are consumed without being sent (a file's placeholders).</summary>
    public void SkipTo(long position) => Sent = Math.Max(Sent, position);

    /// <summary>
    /// Gives the pipe back what is sent, except from <paramref name="heldFrom"/> on (zero-copy sends not completed).
    /// When the send stopped short (<paramref name="examinedAll"/> false: the kernel was full, or the zero-copy budget
    /// ran out), only what was sent counts as examined: the rest still counts against MaxWriteBufferSize.
    /// </summary>
    public void Release(PipeReader reader, in ReadOnlySequence<byte> buffer, long heldFrom, bool examinedAll)
    {
        long release = Math.Min(Sent, heldFrom);
        reader.AdvanceTo(buffer.GetPosition(release - Released), examinedAll ? buffer.End : buffer.GetPosition(Sent - Released));
        Released = release;
    }
}

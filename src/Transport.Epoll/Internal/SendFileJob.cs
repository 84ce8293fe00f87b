using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll.Internal;

/// <summary>How a file range handed to the loop ended.</summary>
internal enum SendFileOutcome
{
    /// <summary>Every byte is with the kernel.</summary>
    Sent,

    /// <summary>The kernel refused the file before any byte went out (EINVAL, ENOSYS): the caller copies it instead.</summary>
    NotSupported,
}

/// <summary>
/// One file range on its way out of a connection: where it sits in the output stream, how far it got, and the
/// placeholder bytes that stand for it in the pipe when it was sent for an HTTP response (see
/// <c>EpollConnection.FileSender.cs</c>). Only the loop's thread changes it after <see cref="EpollConnection"/> takes it.
/// </summary>
internal sealed class SendFileJob
{
    public SendFileJob(SafeFileHandle file, long offset, long count, long placeholders)
    {
        File = file;
        Offset = offset;
        Remaining = count;
        Placeholders = placeholders;
    }

    /// <summary>Bytes that stand for the file in the output pipe (an HTTP response; 0 for a raw send): they are
    /// skipped at their place in the stream, never sent.</summary>
    public long Placeholders { get; }

    public bool HasPlaceholders => Placeholders > 0;

    /// <summary>Sent by id (IEpollConnections.SendFileAsync), from the by-id queue rather than the handler.</summary>
    public bool ById { get; init; }

    /// <summary>A handler's SendFileAsync announced it before its flush (EpollConnection._handlerFilesComing).</summary>
    public bool Announced { get; init; }

    public SafeFileHandle File { get; }

    /// <summary>The raw descriptor, valid while the job holds a reference on <see cref="File"/> (taken by the caller).</summary>
    public int FileFd { get; set; } = -1;

    /// <summary>The file offset of the next byte to send.</summary>
    public long Offset { get; set; }

    /// <summary>File bytes not yet sent.</summary>
    public long Remaining { get; set; }

    /// <summary>The output-stream position the file goes at; -1 until the loop first reads the pipe after taking the job.</summary>
    public long StreamPosition { get; set; } = -1;

    /// <summary>The stream position just past the placeholders (valid once <see cref="StreamPosition"/> is set).</summary>
    public long PlaceholderEnd => StreamPosition + Placeholders;

    /// <summary>Every byte before <see cref="StreamPosition"/> is sent: the file is going out now.</summary>
    public bool Reached { get; set; }

    /// <summary>At least one byte of the file was sent: from here a cancellation must abort the connection.</summary>
    public bool Started { get; set; }

    public bool FileDone => Remaining == 0;

    /// <summary>A slice was not in the page cache: the rest is sent from worker threads.</summary>
    public bool Cold { get; set; }

    /// <summary>Set once the loop knows whether the kernel takes the file (first sendfile call), for a caller that must
    /// decide before it writes placeholders.</summary>
    public TaskCompletionSource<SendFileOutcome> Accepted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource<SendFileOutcome> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Succeed(SendFileOutcome outcome)
    {
        Accepted.TrySetResult(outcome);
        Completion.TrySetResult(outcome);
    }

    public void Fail(Exception error)
    {
        Accepted.TrySetException(error);
        Completion.TrySetException(error);
    }
}

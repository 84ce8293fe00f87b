using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// The application's side of <see cref="IConnectionSendFileFeature"/>: decides between sendfile(2) and the copy
/// fallback, and keeps the order of the output stream (flush what came before, hand the range to the loop, return
/// when it is with the kernel). The loop's side is <see cref="FileSender"/>.
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>Bytes read (one pread) and flushed per chunk by the copy fallback. Measured (benchmarks/load/download.py):
    /// 16 KiB chunks cost a loop wake-up per 16 KiB and ran at 0.42x the Sockets transport's throughput.</summary>
    internal const int CopyChunkSize = 64 * 1024;

    private static readonly Action<object?> s_startFileJob = static state =>
    {
        var (connection, job) = ((EpollConnection, SendFileJob))state!;
        if (job.Announced)
        {
            Interlocked.Decrement(ref connection._handlerFilesComing);
        }

        (connection._files ??= new FileSender(connection)).Start(job);
    };

    /// <summary>
    /// The handler's SendFileAsync calls between their flush and the loop taking their file. The flush ends a pipe read,
    /// where messages by id may go out; one going out there would land between the bytes the handler wrote just before
    /// the file (a header, say) and the file. While this is not 0 the send side holds messages by id back; the file
    /// job, once taken, goes first, and they follow it.
    /// </summary>
    private int _handlerFilesComing;

    /// <summary>A handler's file is between its flush and the loop: nothing by id may start now.</summary>
    private bool HandlerFileComing => Volatile.Read(ref _handlerFilesComing) != 0;

    /// <summary>The loop's side of SendFileAsync, made at the first job (most connections never send a file).</summary>
    private FileSender? _files;

    /// <summary>UseEpollSendFile's response body feature of the last request, reused by the next request of an
    /// HTTP/1.x connection (EpollResponseBodyFeature.For). HTTP/2 streams may race on it: a lost write costs an
    /// allocation, never a wrong feature, as the feature is matched by its context and Kestrel's feature.</summary>
    internal Http.EpollResponseBodyFeature? LastResponseBodyFeature { get; set; }

    public bool IsSendFileAvailable => _context.Options.EnableSendFile && ReferenceEquals(Transport, OriginalTransport) && FileDescriptor >= 0;

    public Task SendFileAsync(SafeFileHandle file, long offset, long count, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (file.IsInvalid || file.IsClosed)
        {
            throw new ArgumentException("The file handle is closed or invalid.", nameof(file));
        }

        return SendFileCoreAsync(file, offset, count, cancellationToken);
    }

    private async Task SendFileCoreAsync(SafeFileHandle file, long offset, long count, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        PipeWriter output = Transport.Output;
        if (count == 0)
        {
            // Nothing to send, but the call still pushes what came before it, as a send would.
            await FlushOrThrowAsync(output, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (!IsSendFileAvailable || !IsRegularFile(file))
        {
            await CopyFileAsync(output, file, offset, count, cancellationToken).ConfigureAwait(false);
            return;
        }

        // Every byte advanced before the call goes first: flushed into the pipe, where the loop finds it ahead of the job.
        // Announced before the flush, so that nothing by id starts where that flush ends (see _handlerFilesComing).
        Interlocked.Increment(ref _handlerFilesComing);
        try
        {
            await FlushOrThrowAsync(output, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            WithdrawFileAnnouncement();
            throw;
        }

        SendFileOutcome outcome = await RunFileJobAsync(new SendFileJob(file, offset, count, placeholders: 0) { Announced = true }, cancellationToken).ConfigureAwait(false);
        if (outcome == SendFileOutcome.NotSupported)
        {
            await CopyFileAsync(output, file, offset, count, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Hands <paramref name="job"/> to the loop (from the application's thread) and waits for its end.</summary>
    internal async Task<SendFileOutcome> RunFileJobAsync(SendFileJob job, CancellationToken cancellationToken)
    {
        bool added = false;
        bool scheduled = false;
        try
        {
            job.File.DangerousAddRef(ref added);
            job.FileFd = (int)job.File.DangerousGetHandle();
            Loop.Schedule(s_startFileJob, (this, job));
            scheduled = true;
            using CancellationTokenRegistration registration = RegisterFileJobCancellation(job, cancellationToken);
            return await job.Completion.Task.ConfigureAwait(false);
        }
        finally
        {
            if (!scheduled && job.Announced)
            {
                WithdrawFileAnnouncement();
            }

            // The loop is done with the descriptor (a worker thread holds a reference of its own while it runs).
            if (added)
            {
                job.File.DangerousRelease();
            }
        }
    }

    /// <summary>A cancellation of <paramref name="token"/> ends <paramref name="job"/> on the loop (untouched, or by an abort once part
    /// of it went out: FileSender.Cancel).</summary>
    private CancellationTokenRegistration RegisterFileJobCancellation(SendFileJob job, CancellationToken token)
        => token.UnsafeRegister(static (state, token) =>
        {
            var (connection, job) = ((EpollConnection, SendFileJob))state!;
            connection.Loop.Schedule(static s =>
            {
                var (c, j, t) = ((EpollConnection, SendFileJob, CancellationToken))s!;
                c._files?.Cancel(j, t);
            }, (connection, job, token));
        }, (this, job));

    /// <summary>The announced file will not come (its flush failed): messages by id held back for it may go.</summary>
    private void WithdrawFileAnnouncement()
    {
        if (Interlocked.Decrement(ref _handlerFilesComing) == 0 && ById is not null)
        {
            Loop.Schedule(static state => ((EpollConnection)state!).LookAtById(), this);
        }
    }

    /// <summary>Ends <paramref name="job"/> from the application's thread, as a cancellation of its token would.</summary>
    internal void CancelFileJob(SendFileJob job)
        => Loop.Schedule(static state =>
        {
            var (connection, job) = ((EpollConnection, SendFileJob))state!;
            connection._files?.Cancel(job, CancellationToken.None);
        }, (this, job));

    internal static bool IsRegularFile(SafeFileHandle file)
        => Libc.StatFile((int)file.DangerousGetHandle(), out bool isRegular, out _) == Error.Success && isRegular;

    private static async ValueTask FlushOrThrowAsync(PipeWriter output, CancellationToken cancellationToken)
    {
        FlushResult flush = await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (flush.IsCanceled)
        {
            throw new OperationCanceledException("The flush before SendFileAsync was cancelled.");
        }

        if (flush.IsCompleted)
        {
            throw new ConnectionAbortedException("The connection's output is closed.");
        }
    }

    /// <summary>
    /// The fallback: reads the file in chunks straight into the pipe's memory and flushes each one (backpressure
    /// as for any write). The same order, the same bytes; counted in the fallback metric.
    /// </summary>
    private async Task CopyFileAsync(PipeWriter output, SafeFileHandle file, long offset, long count, CancellationToken cancellationToken)
    {
        long copied = 0;
        try
        {
            while (copied < count)
            {
                Memory<byte> memory = output.GetMemory(CopyChunkSize);
                int want = (int)Math.Min(memory.Length, count - copied);
                int read = await RandomAccess.ReadAsync(file, memory[..want], offset + copied, cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    throw new IOException($"The file ended at offset {offset + copied}, {count - copied} bytes before the range sent with SendFileAsync: it shrank while it was being sent.");
                }

                output.Advance(read);
                copied += read;
                _context.Metrics.SendFileFallbackBytes(read);
                await FlushOrThrowAsync(output, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (copied > 0 || ex is IOException)
        {
            // Part of the range may be out (or a short file would be sent short): the peer cannot be told where it
            // stopped, so the connection goes.
            Abort(new ConnectionAbortedException("SendFileAsync failed after part of the file was sent: " + ex.Message, ex));
            throw;
        }
    }
}

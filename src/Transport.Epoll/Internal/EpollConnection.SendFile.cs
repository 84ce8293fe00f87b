using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// The loop's side of SendFileAsync. A job takes its place in the output stream at the first read of the pipe after
/// the loop took it (the caller flushed before and waits, so that read holds exactly the bytes that go first). When
/// every byte before it is sent, the file goes out with sendfile(2) in slices of <see cref="FileBytesPerTurn"/>, on
/// the loop when the slice is in the page cache (cachestat(2)) and on a thread-pool thread when it is not, so a cold
/// disk never stalls the loop's other connections. An HTTP response's job also has placeholder bytes in the pipe that
/// Kestrel counted as its body: they are skipped, never sent. Bytes after the job wait until the file is all sent.
/// </summary>
internal sealed partial class EpollConnection
{
    /// <summary>File bytes sent for one connection before the loop serves the others (the rest goes next turn).</summary>
    private const long FileBytesPerTurn = 1024 * 1024;

    private static readonly Action<object?> s_startFileJob = static state =>
    {
        var (connection, job) = ((EpollConnection, SendFileJob))state!;
        connection.StartFileJobOnLoop(job);
    };

    private static readonly Action<object?> s_continueFile = static state =>
    {
        var connection = (EpollConnection)state!;
        connection._filePumpScheduled = false;
        connection.ContinueFile();
    };

    private static readonly Action<object?> s_fileWorkerDone = static state => ((FileWorker)state!).Connection.OnFileWorkerDone((FileWorker)state!);

    /// <summary>Whether cachestat(2) answers on this kernel; without it every slice goes to a worker thread.</summary>
    private static volatile bool s_cacheStatUnavailable;

    private SendFileJob? _fileJob;
    private bool _fileWaitingForWritable;
    private bool _fileWorkerBusy;
    private bool _writableWhileWorkerBusy;
    private bool _filePumpScheduled;
    private Exception? _fileFailure;
    private Error _fileSocketError;

    private enum FileStep
    {
        /// <summary>More to send later: EPOLLOUT, a worker, or the next turn.</summary>
        Waiting,
        Done,
        NotSupported,
        Failed,
    }

    /// <summary>Hands <paramref name="job"/> to the loop (from the application's thread) and waits for its end.</summary>
    internal async Task<SendFileOutcome> RunFileJobAsync(SendFileJob job, CancellationToken cancellationToken)
    {
        bool added = false;
        job.File.DangerousAddRef(ref added);
        try
        {
            job.FileFd = (int)job.File.DangerousGetHandle();
            Loop.Schedule(s_startFileJob, (this, job));
            using CancellationTokenRegistration registration = cancellationToken.UnsafeRegister(static (state, token) =>
            {
                var (connection, job) = ((EpollConnection, SendFileJob))state!;
                connection.Loop.Schedule(static s =>
                {
                    var (c, j, t) = ((EpollConnection, SendFileJob, CancellationToken))s!;
                    c.CancelFileJobOnLoop(j, t);
                }, (connection, job, token));
            }, (this, job));
            return await job.Completion.Task.ConfigureAwait(false);
        }
        finally
        {
            // The loop is done with the descriptor (a worker thread holds a reference of its own while it runs).
            if (added)
            {
                job.File.DangerousRelease();
            }
        }
    }

    /// <summary>Ends <paramref name="job"/> from the application's thread, as a cancellation of its token would.</summary>
    internal void CancelFileJob(SendFileJob job)
        => Loop.Schedule(static state =>
        {
            var (connection, job) = ((EpollConnection, SendFileJob))state!;
            connection.CancelFileJobOnLoop(job, CancellationToken.None);
        }, (this, job));

    private void StartFileJobOnLoop(SendFileJob job)
    {
        if (_fd < 0)
        {
            FailFileJobAfterClose(job, ClosedBeforeFileSent());
            return;
        }

        if (_sendCompleted)
        {
            job.Fail(ClosedBeforeFileSent());
            return;
        }

        if (_fileJob is not null)
        {
            job.Fail(new InvalidOperationException("Another SendFileAsync is in flight on this connection; await it before the next."));
            return;
        }

        _fileJob = job;

        // The send side waits for output: wake it to place the job (its read result holds every earlier byte).
        RereadOutput();

        // Otherwise earlier bytes wait for EPOLLOUT; the read that follows it places the job.
    }

    private void CancelFileJobOnLoop(SendFileJob job, CancellationToken token)
    {
        if (_fileJob != job)
        {
            return;
        }

        var canceled = new OperationCanceledException("SendFileAsync was cancelled.", token);
        // Untouched: no file byte out, no worker in sendfile, and (for an HTTP job) no placeholder written yet: once
        // Accepted told the caller to write them, they could only be skipped by this job, never sent.
        bool untouched = !job.Started && !_fileWorkerBusy
            && (!job.HasPlaceholders || !job.Accepted.Task.IsCompleted)
            && (job.StreamPosition < 0 || _outputSent <= job.StreamPosition);
        _fileJob = null;
        job.Fail(canceled);
        if (untouched)
        {
            _fileWaitingForWritable = false;
            // Nothing of the file went out: the connection goes on; bytes written after the job may follow.
            RereadOutput();

            return;
        }

        // Part of the range is out and the peer cannot be told where it stopped.
        AbortOnLoop(new ConnectionAbortedException("SendFileAsync was cancelled after part of the file was sent.", canceled), EpollCloseReason.Aborted);
    }

    /// <summary>Called from SendOutput once every byte before the job is sent: starts the file, skips its placeholders.</summary>
    private FileStep ReachFileJob(SendFileJob job, long bufferEnd)
    {
        FileStep step;
        if (!job.Reached)
        {
            job.Reached = true;
            step = PumpFile(job);
            if (step is FileStep.NotSupported or FileStep.Failed)
            {
                return step;
            }
        }
        else
        {
            step = job.FileDone ? FileStep.Done : FileStep.Waiting;
        }

        // Placeholders stand for the file in the stream: they are consumed, never sent.
        long skipTo = Math.Min(bufferEnd, job.PlaceholderEnd);
        _outputSent = Math.Max(_outputSent, skipTo);

        return step;
    }

    /// <summary>Drives the current job outside SendOutput: after EPOLLOUT, a worker, or a yielded turn.</summary>
    private void ContinueFile()
    {
        SendFileJob? job = _fileJob;
        if (job is null || !job.Reached || _fd < 0)
        {
            return;
        }

        ApplyFileStep(job, job.FileDone ? FileStep.Done : PumpFile(job));
    }

    /// <summary>What a pump step outside SendOutput leads to: the job's end, the connection's, or nothing yet.</summary>
    private void ApplyFileStep(SendFileJob job, FileStep step)
    {
        switch (step)
        {
            case FileStep.Done when _outputSent == job.PlaceholderEnd:
            case FileStep.NotSupported:
                FinishFileJob(job, step == FileStep.Done ? SendFileOutcome.Sent : SendFileOutcome.NotSupported);

                // Bytes written after the job may be waiting in the pipe (already looked at): read them again.
                RereadOutput();
                break;
            case FileStep.Failed:
                FailFileJob();
                break;
            default:
                // Waiting, or done with placeholders still to skip (the pending read brings them).
                break;
        }
    }

    private unsafe FileStep PumpFile(SendFileJob job)
    {
        long budget = FileBytesPerTurn;
        while (!job.FileDone)
        {
            if (_fileWorkerBusy || _fileWaitingForWritable)
            {
                return FileStep.Waiting;
            }

            if (budget <= 0)
            {
                if (!_filePumpScheduled)
                {
                    _filePumpScheduled = true;
                    Loop.Schedule(s_continueFile, this);
                }

                return FileStep.Waiting;
            }

            long slice = Math.Min(job.Remaining, budget);
            // Once a slice was cold, the rest of the job goes to workers too: readahead puts pages in the cache before
            // their reads complete, so cachestat counts them while a sendfile would still wait for the disk.
            if ((job.Cold || !IsInPageCache(job, slice)) && StartFileWorker(job, slice))
            {
                return FileStep.Waiting;
            }

            long offset = job.Offset;
            nint sent;
            do
            {
                sent = Libc.sendfile(_fd, job.FileFd, &offset, (nuint)slice);
            }
            while (sent < 0 && Errno.Last == Error.EINTR);

            Loop.Counters.SendFileCalls++;
            if (sent < 0)
            {
                return OnSendFileError(job, Errno.Last);
            }

            if (sent == 0)
            {
                return FileShrank(job);
            }

            OnFileBytesSent(job, sent);
            budget -= sent;
        }

        return FileStep.Done;
    }

    private void OnFileBytesSent(SendFileJob job, long sent)
    {
        job.Offset += sent;
        job.Remaining -= sent;
        job.Started = true;
        job.Accepted.TrySetResult(SendFileOutcome.Sent);
        Loop.Counters.SendFileBytes += sent;
        Loop.Counters.BytesSent += sent;
        _lastActivity = Loop.Now;
    }

    private FileStep OnSendFileError(SendFileJob job, Error error)
    {
        if (error == Error.EAGAIN)
        {
            // The socket is full; the kernel took the file, so an HTTP caller may write its placeholders now.
            job.Accepted.TrySetResult(SendFileOutcome.Sent);
            Loop.Counters.WouldBlock++;
            _fileWaitingForWritable = true;
            return FileStep.Waiting;
        }

        if (error is Error.EINVAL or Error.ENOSYS or Error.EOPNOTSUPP && !job.Started && !job.Accepted.Task.IsCompleted)
        {
            // sendfile(2): "EINVAL ... an mmap(2)-like operation is not available for in_fd": the caller copies.
            EpollLog.SendFileNotSupported(_logger, ConnectionId, Errno.Describe(error));
            return FileStep.NotSupported;
        }

        if (Errno.IsSocketFailure(error))
        {
            _fileSocketError = error;
            _fileFailure = null;
            return FileStep.Failed;
        }

        _fileSocketError = Error.Success;
        _fileFailure = new IOException($"sendfile failed reading the file: {Errno.Describe(error)}");
        return FileStep.Failed;
    }

    private FileStep FileShrank(SendFileJob job)
    {
        _fileSocketError = Error.Success;
        _fileFailure = new IOException($"The file ended at offset {job.Offset}, {job.Remaining} bytes before the range sent with SendFileAsync: it shrank while it was being sent.");
        return FileStep.Failed;
    }

    private void FinishFileJob(SendFileJob job, SendFileOutcome outcome)
    {
        _fileJob = null;
        job.Succeed(outcome);
    }

    /// <summary>Ends the job with the failure PumpFile recorded and closes the connection (never sent short).</summary>
    private void FailFileJob()
    {
        Error socketError = _fileSocketError;
        Exception? failure = _fileFailure;
        _fileFailure = null;
        _fileSocketError = Error.Success;
        if (socketError != Error.Success)
        {
            // The peer is gone: the close ends the job (AbandonFileJob), after ConnectionClosed.
            OnSocketError(socketError);
            return;
        }

        SendFileJob? job = _fileJob;
        _fileJob = null;

        failure ??= new IOException("The file could not be sent.");
        job?.Fail(failure);
        EpollLog.SendFileFailed(_logger, ConnectionId, failure.Message);
        AbortOnLoop(new ConnectionAbortedException(failure.Message, failure), EpollCloseReason.Error);
    }

    /// <summary>The loop closed the connection: the job in flight, if any, fails with the close's reason (once
    /// ConnectionClosed's callbacks ran, see EpollConnection.CloseReport.cs).</summary>
    private void AbandonFileJob()
    {
        SendFileJob? job = _fileJob;
        if (job is null)
        {
            return;
        }

        _fileJob = null;
        FailFileJobAfterClose(job, ClosedBeforeFileSent());
    }

    private ConnectionAbortedException ClosedBeforeFileSent() => _closeError switch
    {
        ConnectionAbortedException aborted => aborted,
        null => new ConnectionAbortedException("The connection closed before the file was sent."),
        Exception other => new ConnectionAbortedException("The connection closed before the file was sent.", other),
    };

    /// <summary>
    /// Whether the next <paramref name="length"/> bytes of the job's file are in the page cache. When the kernel cannot
    /// tell (ENOSYS before 6.5; EPERM where it limits cachestat to files the caller may write; other file systems), the
    /// answer is no: the file goes through workers, which is never wrong, only a thread hop per slice.
    /// </summary>
    private static bool IsInPageCache(SendFileJob job, long length)
    {
        if (s_cacheStatUnavailable)
        {
            return false;
        }

        if (Libc.TryCountCachedPages(job.FileFd, job.Offset, length, out long cached, out long total))
        {
            return cached >= total;
        }

        if (Errno.Last == Error.ENOSYS)
        {
            s_cacheStatUnavailable = true;
        }

        // Asking again for each slice of this file would fail again.
        job.Cold = true;
        return false;
    }

    /// <summary>Sends a slice that may need the disk from a thread-pool thread. False when no worker could start (no
    /// descriptor left for the duplicate, or the caller's handle already disposed): the loop then sends the slice itself.</summary>
    private bool StartFileWorker(SendFileJob job, long slice)
    {
        // The worker's own reference on the file first: it may outlive the job (a cancellation ends the job while the
        // worker is in sendfile). Taking it throws once the handle is closed; a duplicate of the socket made before it
        // would then leak, and keep the TCP connection open after the close (the peer would never see a FIN or a RST).
        // The job's reference keeps the descriptor open meanwhile, so the loop can send the slice itself.
        bool added = false;
        try
        {
            job.File.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            return false;
        }

        int socket = Libc.Duplicate(_fd);
        if (socket < 0)
        {
            job.File.DangerousRelease();
            return false;
        }

        job.Cold = true;
        _fileWorkerBusy = true;
        _writableWhileWorkerBusy = false;
        Loop.Counters.SendFileOffloads++;
        ThreadPool.UnsafeQueueUserWorkItem(static worker => worker.Run(), new FileWorker(this, job, socket, slice), preferLocal: false);
        return true;
    }

    private void OnFileWorkerDone(FileWorker worker)
    {
        _fileWorkerBusy = false;
        SendFileJob job = worker.Job;
        if (_fd < 0)
        {
            return;
        }

        if (_fileJob != job)
        {
            // Cancelled meanwhile (that job already ended); a newer job may have waited for the worker to finish.
            ContinueFile();
            return;
        }

        Loop.Counters.SendFileCalls += worker.Calls;
        if (worker.Sent > 0)
        {
            OnFileBytesSent(job, worker.Sent);
        }

        FileStep step = FileStep.Waiting;
        if (worker.Error == Error.EAGAIN && _writableWhileWorkerBusy)
        {
            // EPOLLOUT came while the worker was still in sendfile: that edge is spent, so go on without waiting.
            job.Accepted.TrySetResult(SendFileOutcome.Sent);
        }
        else if (worker.Error != Error.Success)
        {
            step = OnSendFileError(job, worker.Error);
        }
        else if (worker.Sent < worker.Slice)
        {
            step = FileShrank(job);
        }

        if (step == FileStep.Waiting)
        {
            ContinueFile();
        }
        else
        {
            ApplyFileStep(job, step);
        }
    }

    /// <summary>One slice of a file sent off the loop, on a duplicate of the socket's descriptor.</summary>
    private sealed class FileWorker(EpollConnection connection, SendFileJob job, int socket, long slice)
    {
        public EpollConnection Connection { get; } = connection;

        public SendFileJob Job { get; } = job;

        public long Slice { get; } = slice;

        public long Sent { get; private set; }

        public long Calls { get; private set; }

        public Error Error { get; private set; }

        public unsafe void Run()
        {
            try
            {
                long offset = Job.Offset;
                while (Sent < Slice)
                {
                    nint sent = Libc.sendfile(socket, Job.FileFd, &offset, (nuint)(Slice - Sent));
                    Calls++;
                    if (sent < 0)
                    {
                        Error error = Errno.Last;
                        if (error == Error.EINTR)
                        {
                            continue;
                        }

                        Error = error;
                        break;
                    }

                    if (sent == 0)
                    {
                        break;
                    }

                    Sent += sent;
                }
            }
            finally
            {
                _ = Libc.close(socket);
                Job.File.DangerousRelease();
                Connection.Loop.Schedule(s_fileWorkerDone, this);
            }
        }
    }
}

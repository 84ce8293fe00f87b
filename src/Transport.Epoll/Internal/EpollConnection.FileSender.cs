using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

internal sealed partial class EpollConnection
{
    /// <summary>
    /// The loop's side of SendFileAsync: the job in flight, its placeholders, and the cold-file worker. A job takes its
    /// place in the output stream at the first read of the pipe after the loop took it (the caller flushed before and
    /// waits, so that read holds exactly the bytes that go first). When every byte before it is sent, the file goes out
    /// with sendfile(2) in slices of <see cref="FileBytesPerTurn"/>, on the loop when the slice is in the page cache
    /// (cachestat(2)) and on a thread-pool thread when it is not, so a cold disk never stalls the loop's other
    /// connections. An HTTP response's job also has placeholder bytes in the pipe that Kestrel counted as its body: they
    /// are skipped, never sent. Bytes after the job wait until the file is all sent. Made at a connection's first job;
    /// only the loop's thread uses it.
    /// </summary>
    private sealed partial class FileSender(EpollConnection connection)
    {
        /// <summary>File bytes sent for one connection before the loop serves the others (the rest goes next turn).</summary>
        private const long FileBytesPerTurn = 1024 * 1024;

        private static readonly Action<object?> s_continue = static state =>
        {
            FileSender files = ((EpollConnection)state!)._files!;
            files._pumpScheduled = false;
            files.Continue();
        };

        private bool _waitingForWritable;
        private bool _workerBusy;
        private bool _writableWhileWorkerBusy;
        private bool _pumpScheduled;
        private Exception? _failure;
        private Error _socketError;

        /// <summary>The handler's job that arrived while a file sent by id was going out: it starts when that one ends.</summary>
        private SendFileJob? _afterById;

        /// <summary>Tests only (EpollConnection.DescribeSendForTest).</summary>
        public string DescribeForTest()
            => $"after by-id {(_afterById is null ? "none" : "waiting")}, waiting for writable {_waitingForWritable}, worker busy {_workerBusy}, pump scheduled {_pumpScheduled}";

        /// <summary>The file range in flight, or null.</summary>
        public SendFileJob? Job { get; private set; }

        /// <summary>On the loop: takes <paramref name="job"/> as the connection's, or fails it.</summary>
        public void Start(SendFileJob job)
        {
            if (connection._fd < 0)
            {
                connection.FailFileJobAfterClose(job, ClosedBeforeFileSent());
                return;
            }

            if (connection.SendDone)
            {
                job.Fail(ClosedBeforeFileSent());
                return;
            }

            if (Job is { ById: true } && _afterById is null && !job.ById)
            {
                // A file written by id is going out: the handler's goes next (it waits, as for any earlier bytes).
                _afterById = job;
                return;
            }

            if (Job is not null)
            {
                job.Fail(new InvalidOperationException("Another SendFileAsync is in flight on this connection; await it before the next."));
                return;
            }

            Job = job;

            // The send side waits for output: wake it to place the job (its read result holds every earlier byte).
            // Otherwise earlier bytes wait for EPOLLOUT; the read that follows it places the job.
            connection.RereadOutput();
        }

        /// <summary>On the loop, from the by-id queue: <paramref name="job"/> goes out at stream position
        /// <paramref name="position"/>, where every byte before it is sent already.</summary>
        public void StartAt(SendFileJob job, long position)
        {
            Job = job;
            job.StreamPosition = position;
        }

        public void Cancel(SendFileJob job, CancellationToken token)
        {
            if (_afterById == job)
            {
                _afterById = null;
                job.Fail(new OperationCanceledException("SendFileAsync was cancelled.", token));
                return;
            }

            if (Job != job)
            {
                return;
            }

            var canceled = new OperationCanceledException("SendFileAsync was cancelled.", token);
            // Untouched: no file byte out, no worker in sendfile, and (for an HTTP job) no placeholder written yet: once
            // Accepted told the caller to write them, they could only be skipped by this job, never sent.
            bool untouched = !job.Started && !_workerBusy
                && (!job.HasPlaceholders || !job.Accepted.Task.IsCompleted)
                && (job.StreamPosition < 0 || connection._positions.Sent <= job.StreamPosition);
            Job = null;
            job.Fail(canceled);
            if (untouched)
            {
                _waitingForWritable = false;
                // Nothing of the file went out: the connection goes on; bytes written after the job may follow.
                connection.RereadOutput();
                if (_afterById is { } next)
                {
                    _afterById = null;
                    Start(next);
                }

                return;
            }

            // Part of the range is out and the peer cannot be told where it stopped.
            connection.AbortOnLoop(new ConnectionAbortedException("SendFileAsync was cancelled after part of the file was sent.", canceled), EpollCloseReason.Aborted);
        }

        /// <summary>
        /// From the send loop, once every byte before the job is sent: starts the file or goes on with it, skips its
        /// placeholders, and ends the job when the file and its placeholders are through.
        /// </summary>
        public FileProgress Step(SendFileJob job, long bufferEnd)
        {
            FileStep step;
            if (!job.Reached)
            {
                job.Reached = true;
                step = Pump(job);
            }
            else
            {
                step = job.FileDone ? FileStep.Done : FileStep.Waiting;
            }

            if (step is not (FileStep.NotSupported or FileStep.Failed))
            {
                // Placeholders stand for the file in the stream: they are consumed, never sent.
                connection._positions.SkipTo(Math.Min(bufferEnd, job.PlaceholderEnd));
            }

            switch (step)
            {
                case FileStep.Done when connection._positions.Sent == job.PlaceholderEnd:
                    Finish(job, SendFileOutcome.Sent);
                    return FileProgress.Finished;
                case FileStep.NotSupported:
                    Finish(job, SendFileOutcome.NotSupported);
                    return FileProgress.Finished;
                case FileStep.Failed:
                    return FileProgress.Failed;
                default:
                    // The file, or more of its placeholders, is still to come.
                    return FileProgress.Waiting;
            }
        }

        /// <summary>EPOLLOUT: a slice waiting for room goes on; a worker in sendfile learns of the edge when it returns.</summary>
        public void OnWritable()
        {
            if (_workerBusy)
            {
                // A worker thread is in sendfile on this socket: it cannot see this edge, so remember it for its return.
                _writableWhileWorkerBusy = true;
            }

            if (_waitingForWritable)
            {
                _waitingForWritable = false;
                Continue();
            }
        }

        /// <summary>Ends the job with the failure the pump recorded and closes the connection (never sent short).</summary>
        public void Fail()
        {
            Error socketError = _socketError;
            Exception? failure = _failure;
            _failure = null;
            _socketError = Error.Success;
            if (socketError != Error.Success)
            {
                // The peer is gone: the close ends the job (Abandon), after ConnectionClosed.
                connection.OnSocketError(socketError);
                return;
            }

            SendFileJob? job = Job;
            Job = null;

            failure ??= new IOException("The file could not be sent.");
            job?.Fail(failure);
            EpollLog.SendFileFailed(connection._logger, connection.ConnectionId, failure.Message);
            connection.AbortOnLoop(new ConnectionAbortedException(failure.Message, failure), EpollCloseReason.Error);
        }

        /// <summary>The loop closed the connection: the job in flight, if any, fails with the close's reason (once
        /// ConnectionClosed's callbacks ran, see EpollConnection.CloseReport.cs).</summary>
        public void Abandon()
        {
            if (_afterById is { } waiting)
            {
                _afterById = null;
                connection.FailFileJobAfterClose(waiting, ClosedBeforeFileSent());
            }

            SendFileJob? job = Job;
            if (job is null)
            {
                return;
            }

            Job = null;
            connection.FailFileJobAfterClose(job, ClosedBeforeFileSent());
        }

        /// <summary>Drives the current job outside the send loop: after EPOLLOUT, a worker, or a yielded turn.</summary>
        private void Continue()
        {
            SendFileJob? job = Job;
            if (job is null || !job.Reached || connection._fd < 0)
            {
                return;
            }

            Apply(job, job.FileDone ? FileStep.Done : Pump(job));
        }

        /// <summary>What a pump step outside the send loop leads to: the job's end, the connection's, or nothing yet.</summary>
        private void Apply(SendFileJob job, FileStep step)
        {
            switch (step)
            {
                case FileStep.Done when connection._positions.Sent == job.PlaceholderEnd:
                case FileStep.NotSupported:
                    Finish(job, step == FileStep.Done ? SendFileOutcome.Sent : SendFileOutcome.NotSupported);

                    // Bytes written after the job may be waiting in the pipe (already looked at): read them again.
                    connection.RereadOutput();
                    break;
                case FileStep.Failed:
                    Fail();
                    break;
                default:
                    // Waiting, or done with placeholders still to skip (the pending read brings them).
                    break;
            }
        }

        private unsafe FileStep Pump(SendFileJob job)
        {
            long budget = FileBytesPerTurn;
            while (!job.FileDone)
            {
                if (_workerBusy || _waitingForWritable)
                {
                    return FileStep.Waiting;
                }

                if (budget <= 0)
                {
                    if (!_pumpScheduled)
                    {
                        _pumpScheduled = true;
                        connection.Loop.Schedule(s_continue, connection);
                    }

                    return FileStep.Waiting;
                }

                long slice = Math.Min(job.Remaining, budget);
                // Once a slice was cold, the rest of the job goes to workers too: readahead puts pages in the cache
                // before their reads complete, so cachestat counts them while a sendfile would still wait for the disk.
                if ((job.Cold || !IsInPageCache(job, slice)) && StartWorker(job, slice))
                {
                    return FileStep.Waiting;
                }

                long offset = job.Offset;
                nint sent;
                do
                {
                    sent = Libc.sendfile(connection._fd, job.FileFd, &offset, (nuint)slice);
                }
                while (sent < 0 && Errno.Last == Error.EINTR);

                connection.Loop.Counters.SendFileCalls++;
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
            LoopCounters counters = connection.Loop.Counters;
            counters.SendFileBytes += sent;
            counters.BytesSent += sent;
            connection._lastActivity = connection.Loop.Now;
        }

        private FileStep OnSendFileError(SendFileJob job, Error error)
        {
            if (error == Error.EAGAIN)
            {
                // The socket is full; the kernel took the file, so an HTTP caller may write its placeholders now.
                job.Accepted.TrySetResult(SendFileOutcome.Sent);
                connection.Loop.Counters.WouldBlock++;
                _waitingForWritable = true;
                return FileStep.Waiting;
            }

            if (error is Error.EINVAL or Error.ENOSYS or Error.EOPNOTSUPP && !job.Started && !job.Accepted.Task.IsCompleted)
            {
                // sendfile(2): "EINVAL ... an mmap(2)-like operation is not available for in_fd": the caller copies.
                EpollLog.SendFileNotSupported(connection._logger, connection.ConnectionId, Errno.Describe(error));
                return FileStep.NotSupported;
            }

            if (Errno.IsSocketFailure(error))
            {
                _socketError = error;
                _failure = null;
                return FileStep.Failed;
            }

            _socketError = Error.Success;
            _failure = new IOException($"sendfile failed reading the file: {Errno.Describe(error)}");
            return FileStep.Failed;
        }

        private FileStep FileShrank(SendFileJob job)
        {
            _socketError = Error.Success;
            _failure = new IOException($"The file ended at offset {job.Offset}, {job.Remaining} bytes before the range sent with SendFileAsync: it shrank while it was being sent.");
            return FileStep.Failed;
        }

        private void Finish(SendFileJob job, SendFileOutcome outcome)
        {
            Job = null;
            job.Succeed(outcome);
            if (_afterById is { } next)
            {
                _afterById = null;

                // Started once this send loop has unwound (the end of the turn): from inside it, the re-read that
                // places the job finds no output read pending and is lost, and the handler's file would wait forever
                // for bytes it is not going to write (a hang in about one run in five of the by-id file test).
                connection.Loop.Schedule(s_startWaiting, (this, next));
            }
        }

        private static readonly Action<object?> s_startWaiting = static state =>
        {
            var (sender, job) = ((FileSender, SendFileJob))state!;
            sender.Start(job);
        };

        private ConnectionAbortedException ClosedBeforeFileSent() => connection._closeError switch
        {
            ConnectionAbortedException aborted => aborted,
            null => new ConnectionAbortedException("The connection closed before the file was sent."),
            Exception other => new ConnectionAbortedException("The connection closed before the file was sent.", other),
        };

        private enum FileStep
        {
            /// <summary>More to send later: EPOLLOUT, a worker, or the next turn.</summary>
            Waiting,
            Done,
            NotSupported,
            Failed,
        }
    }

    /// <summary>Where a file job stands for the send loop.</summary>
    private enum FileProgress
    {
        /// <summary>The file (or more of its placeholders) is still to come: what follows it waits.</summary>
        Waiting,

        /// <summary>The job ended (sent, or refused before any byte so the caller copies): what follows may go.</summary>
        Finished,

        /// <summary>The file could not be sent: <see cref="FileSender.Fail"/> ends the job and the connection.</summary>
        Failed,
    }
}

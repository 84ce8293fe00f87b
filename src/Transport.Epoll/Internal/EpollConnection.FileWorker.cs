using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

internal sealed partial class EpollConnection
{
    /// <summary>The cold-file half of <see cref="FileSender"/>: slices that may need the disk go to a thread-pool thread.</summary>
    private sealed partial class FileSender
    {
        private static readonly Action<object?> s_workerDone = static state =>
        {
            var (connection, worker) = ((EpollConnection, FileWorker))state!;
            connection._files!.OnWorkerDone(worker);
        };

        /// <summary>Whether cachestat(2) answers on this kernel; without it every slice goes to a worker thread.</summary>
        private static volatile bool s_cacheStatUnavailable;

        /// <summary>
        /// Whether the next <paramref name="length"/> bytes of the job's file are in the page cache. When the kernel
        /// cannot tell (ENOSYS before 6.5; EPERM where it limits cachestat to files the caller may write; other file
        /// systems), the answer is no: the file goes through workers, which is never wrong, only a thread hop per slice.
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

        /// <summary>Sends a slice that may need the disk from a thread-pool thread. False when no worker could start
        /// (no descriptor left for the duplicate, or the caller's handle already disposed): the loop then sends the
        /// slice itself.</summary>
        private bool StartWorker(SendFileJob job, long slice)
        {
            // The worker's own reference on the file first: it may outlive the job (a cancellation ends the job while
            // the worker is in sendfile). Taking it throws once the handle is closed; a duplicate of the socket made
            // before it would then leak, and keep the TCP connection open after the close (the peer would never see a
            // FIN or a RST). The job's reference keeps the descriptor open meanwhile, so the loop can send the slice.
            bool added = false;
            try
            {
                job.File.DangerousAddRef(ref added);
            }
            catch (ObjectDisposedException)
            {
                return false;
            }

            int socket = Libc.Duplicate(connection._fd);
            if (socket < 0)
            {
                job.File.DangerousRelease();
                return false;
            }

            job.Cold = true;
            _workerBusy = true;
            _writableWhileWorkerBusy = false;
            connection.Loop.Counters.SendFileOffloads++;
            ThreadPool.UnsafeQueueUserWorkItem(static worker => worker.Run(), new FileWorker(connection, job, socket, slice), preferLocal: false);
            return true;
        }

        private void OnWorkerDone(FileWorker worker)
        {
            _workerBusy = false;
            SendFileJob job = worker.Job;
            if (connection._fd < 0)
            {
                return;
            }

            if (Job != job)
            {
                // Cancelled meanwhile (that job already ended); a newer job may have waited for the worker to finish.
                Continue();
                return;
            }

            connection.Loop.Counters.SendFileCalls += worker.Calls;
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
                Continue();
            }
            else
            {
                Apply(job, step);
            }
        }

        /// <summary>One slice of a file sent off the loop, on a duplicate of the socket's descriptor.</summary>
        private sealed class FileWorker(EpollConnection connection, SendFileJob job, int socket, long slice)
        {
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

                    // The connection leads the state, so a failure in OnWorkerDone closes this connection (see
                    // EpollLoop.ConnectionOf), as any other work of the connection that throws.
                    connection.Loop.Schedule(s_workerDone, (connection, this));
                }
            }
        }
    }
}

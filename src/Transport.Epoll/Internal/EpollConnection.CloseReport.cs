namespace Transport.Epoll.Internal;

/// <summary>
/// When a SendFileAsync learns that its connection went away. Kestrel checks, after the application returns, that the
/// response got its Content-Length, and logs a short one as an error ("An unhandled exception was thrown by the
/// application"), as it logs any exception but a cancellation or an IOException, unless it already knows the
/// connection went away: its ConnectionClosed callback tells it. Response.SendFileAsync swallows cancellations, so a
/// file job that ended because the client left (a closed tab, a cancelled download) must reach the application only
/// after ConnectionClosed's callbacks ran, or each one is logged as an application error. Kestrel's own copy never
/// races it: its writes to a dead connection just return.
/// </summary>
/// <remarks>
/// The input is not held back the same way: it completes with the reset at once, then ConnectionClosed is queued, as
/// on the Sockets transport. Kestrel's request-body reader does not expect ConnectionClosed while the application is
/// between a read and its AdvanceTo (it then fails with ArgumentOutOfRangeException in TrackConsumedAndExaminedBytes).
/// </remarks>
internal sealed partial class EpollConnection
{
    /// <summary>
    /// On the loop, with the fd closed: <paramref name="job"/> (no longer the connection's) fails with
    /// <paramref name="error"/> on the thread pool once ConnectionClosed's callbacks returned (at once if they did
    /// already). CloseFd queues ConnectionClosed right after FileSender.Abandon, so the wait is one thread-pool hop; only
    /// this close path pays for it. A ConnectionClosed callback must not block waiting for the job: it would wait for
    /// itself.
    /// </summary>
    private void FailFileJobAfterClose(SendFileJob job, Exception error)
        => _ = ClosedAndCallbacksDone.Task.ContinueWith(
            static (_, state) =>
            {
                var (job, error) = ((SendFileJob, Exception))state!;
                job.Fail(error);
            },
            (job, error),
            CancellationToken.None,
            TaskContinuationOptions.None,
            TaskScheduler.Default);
}

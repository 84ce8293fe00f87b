namespace Transport.Epoll.Internal;

/// <summary>
/// <see cref="IEpollConnectionFeature.WithSocketAsync"/>: the application's way to the socket's fd. Only the loop
/// closes the fd, so code that runs on the loop holds it open for as long as it runs; a raw fd number handed out
/// instead could be closed and given to another connection at any moment.
/// </summary>
internal sealed partial class EpollConnection
{
    public Task<TResult> WithSocketAsync<TResult>(Func<int, TResult> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (Loop.IsCurrentThread)
        {
            try
            {
                return Task.FromResult(RunWithSocket(action));
            }
            catch (Exception ex)
            {
                return Task.FromException<TResult>(ex);
            }
        }

        var completion = new TaskCompletionSource<TResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        Loop.Schedule(static state =>
        {
            var (connection, action, completion) = ((EpollConnection, Func<int, TResult>, TaskCompletionSource<TResult>))state!;
            try
            {
                completion.TrySetResult(connection.RunWithSocket(action));
            }
            catch (Exception ex)
            {
                // The application's exception (or the closed connection's) goes back to the caller, not to the loop.
                completion.TrySetException(ex);
            }
        }, (this, action, completion));
        return completion.Task;
    }

    private TResult RunWithSocket<TResult>(Func<int, TResult> action)
    {
        int fd = _fd;
        if (fd < 0)
        {
            throw new ObjectDisposedException(ConnectionId, "The connection is closed: its socket is gone.");
        }

        return action(fd);
    }
}

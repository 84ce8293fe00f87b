using Microsoft.AspNetCore.Connections;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Captures one connection's <see cref="IEpollConnectionFeature"/> and tells when its ConnectionClosed fired.</summary>
public sealed class ConnectionTracker
{
    private readonly TaskCompletionSource<IEpollConnectionFeature> _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task<IEpollConnectionFeature> Connected => _connected.Task;

    /// <summary>ConnectionClosed fired (with AllowHalfOpen off, a peer's FIN fires it before the fd closes).</summary>
    public Task Closed => _closed.Task;

    public Func<ConnectionContext, Task> Track(Func<ConnectionContext, Task> handler) => async connection =>
    {
        var feature = connection.Features.Get<IEpollConnectionFeature>()
            ?? throw new InvalidOperationException("Not an epoll connection.");
        connection.ConnectionClosed.Register(() => _closed.TrySetResult());
        _connected.TrySetResult(feature);
        try
        {
            await handler(connection);
        }
        catch (Exception e) when (e is ConnectionAbortedException or ConnectionResetException)
        {
            // The close under test ended the handler's read.
        }

        // The handler stays until ConnectionClosed has fired: what is tested here is the close, not how
        // ConnectionClosed races with the disposal that follows a returned handler (ConnectionClosedTests).
        try
        {
            await _closed.Task.WaitAsync(Timeouts.Default);
        }
        catch (TimeoutException)
        {
            // The test's own wait on Closed reports it.
        }
    };
}

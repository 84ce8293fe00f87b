namespace WebApp;

/// <summary>
/// <c>--DrainDelay</c>: when the sample is asked to stop, it keeps serving (and accepting) this long with
/// <c>GET /ready</c> already answering 503, before Kestrel stops accepting and asks connections to close. A load
/// balancer that health-checks /ready, or an orchestrator that removes endpoints asynchronously, needs this time to
/// stop sending new connections; without it they would be refused until it noticed. Runs in
/// <see cref="IHostedLifecycleService.StoppingAsync"/>, which the host calls before any hosted service (the web
/// server among them) stops. The host's ShutdownTimeout covers the delay too.
/// </summary>
internal sealed class DrainDelay(TimeSpan delay) : IHostedLifecycleService
{
    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(delay, cancellationToken);
        }
        catch (OperationCanceledException)
        {
            // The shutdown timeout ran out: stop now.
        }
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

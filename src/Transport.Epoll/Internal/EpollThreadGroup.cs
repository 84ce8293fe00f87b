namespace Transport.Epoll.Internal;

/// <summary>The <c>ThreadCount</c> event loops of one factory, started together and stopped together.</summary>
internal sealed class EpollThreadGroup : IDisposable
{
    private readonly LoopWatchdog? _watchdog;

    public EpollThreadGroup(int count, ConnectionTable table, TransportContext context)
    {
        var loops = new EpollLoop[count];
        try
        {
            for (int i = 0; i < count; i++)
            {
                loops[i] = new EpollLoop(i, table, context);
            }
        }
        catch
        {
            foreach (EpollLoop? loop in loops)
            {
                loop?.Dispose();
            }

            throw;
        }

        Loops = loops;
        foreach (EpollLoop loop in loops)
        {
            loop.Start();
        }

        if (context.Options.LoopStallThreshold is { } threshold && threshold > TimeSpan.Zero)
        {
            _watchdog = new LoopWatchdog(loops, threshold, context);
        }
    }

    public EpollLoop[] Loops { get; }

    /// <summary>Stops every loop: their remaining connections are aborted, their threads exit, their fds close.</summary>
    public Task StopAsync()
    {
        Dispose();
        return Task.WhenAll(Loops.Select(static loop => loop.StopAsync()));
    }

    /// <summary>Stops the stall watchdog; the loops stop with <see cref="StopAsync"/>.</summary>
    public void Dispose() => _watchdog?.Dispose();
}

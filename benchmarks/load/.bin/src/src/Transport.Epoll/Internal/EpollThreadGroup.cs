namespace Transport.Epoll.Internal;

/// <summary>The <c>ThreadCount</c> event loops of one factory, started together and stopped together.</summary>
internal sealed class EpollThreadGroup
{
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
    }

    public EpollLoop[] Loops { get; }

    /// <summary>Stops every loop: their remaining connections are aborted, their threads exit, their fds close.</summary>
    public Task StopAsync() => Task.WhenAll(Loops.Select(static loop => loop.StopAsync()));
}

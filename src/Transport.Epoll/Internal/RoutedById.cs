using System.Collections.Concurrent;
using System.Net;

namespace Transport.Epoll.Internal;

/// <summary>Something by id that must be queued on the loop, in order with the broadcasts posted to it before
/// (<see cref="EpollLoop.RouteById"/>): a broadcast's fan-out, or a write made while one was waiting.</summary>
internal abstract class RoutedById
{
    /// <summary>On the loop: queues the item, then lets writes by id go straight to their queues again once nothing
    /// routed is left.</summary>
    public void Run()
    {
        EpollLoop loop = Loop;
        try
        {
            Apply();
        }
        finally
        {
            loop.RoutedDone();
        }
    }

    protected abstract EpollLoop Loop { get; }

    protected abstract void Apply();
}

/// <summary>A write by id (a message, a file, the close) that had to queue behind a broadcast.</summary>
internal sealed class RoutedWrite(EpollConnection connection, ByIdQueue queue, ByIdItem item) : RoutedById
{
    protected override EpollLoop Loop => connection.Loop;

    protected override void Apply() => connection.EnqueueRouted(queue, item);
}

/// <summary>
/// One broadcast to an endpoint on one loop: the loop's copy of the message (one reference, the job's) and who it is
/// for. Pooled: a broadcast allocates nothing once the pool is warm.
/// </summary>
internal sealed class BroadcastJob : RoutedById
{
    private const int MaxPooled = 1024;
    private static readonly ConcurrentQueue<BroadcastJob> s_pool = new();
    private static int s_pooled;

    private EpollLoop? _loop;

    public ByIdMessage Message { get; private set; } = null!;

    public EndPoint EndPoint { get; private set; } = null!;

    public ulong ExceptId { get; private set; }

    protected override EpollLoop Loop => _loop!;

    public static BroadcastJob Rent(EpollLoop loop, ByIdMessage message, EndPoint endPoint, ulong exceptId)
    {
        if (s_pool.TryDequeue(out BroadcastJob? job))
        {
            Interlocked.Decrement(ref s_pooled);
        }
        else
        {
            job = new BroadcastJob();
        }

        job._loop = loop;
        job.Message = message;
        job.EndPoint = endPoint;
        job.ExceptId = exceptId;
        return job;
    }

    /// <summary>The job was not posted (the loop's broadcasts are at their limit): its message goes back.</summary>
    public void Discard()
    {
        Message.Release();
        Return();
    }

    protected override void Apply()
    {
        try
        {
            _loop!.FanOut(this);
        }
        finally
        {
            Message.Release();
            Return();
        }
    }

    private void Return()
    {
        Message = null!;
        EndPoint = null!;
        if (Interlocked.Increment(ref s_pooled) <= MaxPooled)
        {
            s_pool.Enqueue(this);
        }
        else
        {
            Interlocked.Decrement(ref s_pooled);
        }
    }
}

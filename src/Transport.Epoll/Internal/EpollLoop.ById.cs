namespace Transport.Epoll.Internal;

/// <summary>
/// The loop's list of connections with something queued by id (EpollConnection.ById.cs): an intrusive lock-free stack
/// that writers on any thread push onto (the link lives in the connection's <see cref="ByIdQueue"/>, and a connection
/// is in it at most once), which the loop takes whole. Only the push onto an empty list schedules work on the loop, so
/// a broadcast to 10,000 connections costs one scheduled item per loop, not one per connection, and allocates nothing
/// (a work item per connection grew the loop's work queue by a segment per burst).
/// </summary>
internal sealed partial class EpollLoop
{
    private static readonly Action<object?> s_lookAtByIdReady = static state => ((EpollLoop)state!).LookAtByIdReady();

    private EpollConnection? _byIdReady;

    /// <summary>Any thread: <paramref name="connection"/>'s by-id queue has something new (its wake-up was claimed).</summary>
    public void WakeForById(EpollConnection connection, ByIdQueue queue)
    {
        EpollConnection? head;
        do
        {
            head = Volatile.Read(ref _byIdReady);
            queue.NextReady = head;
        }
        while (Interlocked.CompareExchange(ref _byIdReady, connection, head) != head);

        if (head is null)
        {
            Schedule(s_lookAtByIdReady, this);
        }
    }

    private void LookAtByIdReady()
    {
        EpollConnection? connection = Interlocked.Exchange(ref _byIdReady, null);
        while (connection is not null)
        {
            ByIdQueue queue = connection.ById!;
            EpollConnection? next = queue.NextReady;
            queue.NextReady = null;
            try
            {
                connection.LookAtById();
            }
            catch (Exception ex)
            {
                HandlerFailed(connection, ex);
            }

            connection = next;
        }
    }
}

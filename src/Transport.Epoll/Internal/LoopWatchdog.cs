using System.Collections.Concurrent;

namespace Transport.Epoll.Internal;

/// <summary>
/// Notices a loop turn that runs longer than <see cref="EpollTransportOptions.LoopStallThreshold"/>: one thread for the
/// whole group, started with the loops, looks at each loop's turn start every half threshold. A thread of its own, not
/// a timer: a timer's callbacks need the thread pool, which may be starved by the very code that blocks, and which
/// creates threads as it goes, each needing resources of the runtime's that a process out of fds may not have (the
/// out-of-fds test's sample, which the transport otherwise keeps serving, was ended with "Out of memory."). Each long turn is counted once
/// (<c>epoll.loop.stalls</c>) and logged once per endpoint with the connection the loop was serving, so a user who
/// turned on inline scheduling and blocks finds out in the logs rather than in the latency. The loops only publish two
/// fields per turn and one per event; the watchdog never touches them otherwise.
/// </summary>
internal sealed class LoopWatchdog : IDisposable
{
    private readonly EpollLoop[] _loops;
    private readonly long[] _reportedTurn;
    private readonly long _thresholdMs;
    private readonly TransportContext _context;
    private readonly ConcurrentDictionary<string, bool> _loggedEndPoints = new();
    private readonly ManualResetEventSlim _stopping = new();
    private readonly TimeSpan _period;

    public LoopWatchdog(EpollLoop[] loops, TimeSpan threshold, TransportContext context)
    {
        _loops = loops;
        _reportedTurn = new long[loops.Length];
        _thresholdMs = (long)threshold.TotalMilliseconds;
        _context = context;
        _period = threshold / 2;
        var thread = new Thread(static state => ((LoopWatchdog)state!).Run(), maxStackSize: 128 * 1024)
        {
            Name = "epoll_watchdog",
            IsBackground = true,
        };
        thread.Start(this);
    }

    /// <summary>Stops the thread: it exits at its next wake-up (nothing waits for it).</summary>
    public void Dispose() => _stopping.Set();

    private void Run()
    {
        while (!_stopping.Wait(_period))
        {
            Check();
        }
    }

    private void Check()
    {
        long now = Environment.TickCount64;
        for (int i = 0; i < _loops.Length; i++)
        {
            EpollLoop loop = _loops[i];
            long started = loop.TurnStartedAt;
            long turn = loop.TurnNumber;
            if (started == 0 || now - started < _thresholdMs || _reportedTurn[i] == turn)
            {
                continue;
            }

            _reportedTurn[i] = turn;
            _context.Metrics.LoopStalled();
            (string what, string endPoint) = Describe(loop.Serving);
            if (_loggedEndPoints.TryAdd(endPoint, true))
            {
                EpollLog.LoopStalled(_context.Logger, loop.Index, now - started, what, endPoint);
            }
        }
    }

    private static (string What, string EndPoint) Describe(object? serving)
    {
        if (EpollLoop.ConnectionOf(serving) is { } connection)
        {
            // An outbound connection's local endpoint is an ephemeral port, one per connection: its server names it,
            // so that a stall is still reported once per place and not once per connection.
            string endPoint = connection.Direction == EpollConnectionDirection.Outbound
                ? "outbound to " + (connection.RemoteEndPoint?.ToString() ?? "?")
                : connection.LocalEndPoint?.ToString() ?? "an endpoint";
            return ($"connection {connection.ConnectionId}", endPoint);
        }

        // Accepting runs Kestrel's accept continuation, and with inline scheduling the new connection's first code.
        return serving switch
        {
            AcceptRegistration accept => ("an accept", accept.EndPointName),
            IEpollHandler handler => ($"handler {handler.Id:X}", "an endpoint"),
            _ => ("its own work", "no endpoint"),
        };
    }
}

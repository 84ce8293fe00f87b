using System.Collections.Concurrent;

namespace Transport.Epoll.Internal;

/// <summary>
/// Notices a loop turn that runs longer than <see cref="EpollTransportOptions.LoopStallThreshold"/>: one timer for the
/// whole group looks at each loop's turn start every half threshold. Each long turn is counted once
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
    private readonly Timer _timer;

    public LoopWatchdog(EpollLoop[] loops, TimeSpan threshold, TransportContext context)
    {
        _loops = loops;
        _reportedTurn = new long[loops.Length];
        _thresholdMs = (long)threshold.TotalMilliseconds;
        _context = context;
        TimeSpan period = threshold / 2;
        _timer = new Timer(static state => ((LoopWatchdog)state!).Check(), this, period, period);
    }

    /// <summary>Stops the timer (the loops are stopping).</summary>
    public void Dispose() => _timer.Dispose();

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
            return ($"connection {connection.ConnectionId}", connection.LocalEndPoint?.ToString() ?? "an endpoint");
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

namespace Transport.Epoll.Internal;

/// <summary>
/// The connections of this loop still waiting for their PROXY protocol header, and the one check that closes those
/// past their deadline. Not a timer per connection: a timer entry would keep its connection alive for the whole
/// timeout after the header arrived (3 s by default), and at thousands of connections a second every connection
/// would then survive into the GC's older generations: measured, that cost more than the rest of the connection's
/// set-up. Here a connection leaves the list (O(1), intrusive links in its header state) as soon as its header is
/// read or it closes, and one loop timer runs only while the list is not empty, every eighth of the shortest timeout
/// in it (at most every 250 ms), so a header closes between 1 and 1.125 times its timeout after the accept.
/// </summary>
internal sealed partial class EpollLoop
{
    private static readonly Action<object?> s_checkProxyHeaderDeadlines = static state => ((EpollLoop)state!).CheckProxyHeaderDeadlines();

    private ProxyHeaderState? _awaitingProxyHeaders;
    private bool _proxyHeaderCheckArmed;

    public void AwaitProxyHeader(ProxyHeaderState state)
    {
        // The clock now, not the turn's start (Now): accept4 takes every pending connection in one turn, so one that
        // arrived late in a long turn would otherwise be closed before its timeout had passed.
        state.Deadline = Environment.TickCount64 + state.Endpoint.HeaderTimeoutMs;
        state.NextAwaiting = _awaitingProxyHeaders;
        if (_awaitingProxyHeaders is not null)
        {
            _awaitingProxyHeaders.PreviousAwaiting = state;
        }

        _awaitingProxyHeaders = state;
        if (!_proxyHeaderCheckArmed)
        {
            _proxyHeaderCheckArmed = true;
            RunAfter(CheckInterval(state), s_checkProxyHeaderDeadlines, this);
        }
    }

    public void StopAwaitingProxyHeader(ProxyHeaderState state)
    {
        if (state.PreviousAwaiting is { } previous)
        {
            previous.NextAwaiting = state.NextAwaiting;
        }
        else if (_awaitingProxyHeaders == state)
        {
            _awaitingProxyHeaders = state.NextAwaiting;
        }
        else
        {
            return;
        }

        if (state.NextAwaiting is { } next)
        {
            next.PreviousAwaiting = state.PreviousAwaiting;
        }

        state.NextAwaiting = null;
        state.PreviousAwaiting = null;
    }

    private static long CheckInterval(ProxyHeaderState state) => Math.Clamp(state.Endpoint.HeaderTimeoutMs / 8, 1, 250);

    private void CheckProxyHeaderDeadlines()
    {
        _proxyHeaderCheckArmed = false;
        long now = Environment.TickCount64;
        long interval = long.MaxValue;
        ProxyHeaderState? state = _awaitingProxyHeaders;
        while (state is not null)
        {
            // Closing the connection takes it off the list: step first.
            ProxyHeaderState? next = state.NextAwaiting;
            if (now >= state.Deadline && state.Connection is { } connection)
            {
                try
                {
                    connection.OnProxyHeaderTimedOut();
                }
                catch (Exception ex)
                {
                    HandlerFailed(connection, ex);
                }
            }
            else
            {
                interval = Math.Min(interval, CheckInterval(state));
            }

            state = next;
        }

        if (_awaitingProxyHeaders is not null)
        {
            _proxyHeaderCheckArmed = true;
            RunAfter(interval == long.MaxValue ? 1 : interval, s_checkProxyHeaderDeadlines, this);
        }
    }
}

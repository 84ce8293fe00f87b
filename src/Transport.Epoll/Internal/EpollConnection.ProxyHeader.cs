using Microsoft.AspNetCore.Connections;

namespace Transport.Epoll.Internal;

/// <summary>
/// A connection on an endpoint that requires a PROXY protocol header (<see cref="ProxyProtocolOptions"/>). The header
/// is read by the connection's first reads, on its loop, before a byte reaches the input pipe: no pipe stage of its
/// own, and in the usual case (the whole header in one segment, as the specification asks senders to send it) no
/// copy. Only then do the header's addresses become the connection's endpoints and does the listener queue the
/// connection for Kestrel's AcceptAsync, so neither Kestrel nor a connection handler ever sees a connection without
/// its client's address. A malformed header, one that does not arrive within the timeout, or a close before it is
/// complete ends the connection with a RST (section 2.1: abort "so that the sender gets a chance to notice the
/// anomaly") and its own close reason.
/// </summary>
internal sealed partial class EpollConnection
{
    private ProxyHeaderState? _proxyHeader;

    private bool AwaitingProxyHeader => _proxyHeader is { Pending: true };

    /// <summary>On the loop, right after the connection was set up and before its first event: read the header first.</summary>
    public void ExpectProxyHeader(ProxyHeaderState state)
    {
        _proxyHeader = state;
        Loop.AwaitProxyHeader(state);
    }

    /// <summary>
    /// Takes the header from a read's bytes. False when the connection was closed (invalid header); otherwise
    /// <paramref name="data"/> is what follows the header (empty while it is incomplete), for the application.
    /// </summary>
    private bool ReceiveProxyHeader(ref ReadOnlySpan<byte> data)
    {
        ProxyHeaderState state = _proxyHeader!;
        ProxyHeaderStatus status = state.Feed(data, out int consumed, out string? error);
        if (status == ProxyHeaderStatus.NeedMore)
        {
            data = default;
            return true;
        }

        Loop.StopAwaitingProxyHeader(state);
        if (status == ProxyHeaderStatus.Invalid)
        {
            RejectProxyHeader(EpollCloseReason.ProxyHeaderInvalid, error ?? "an invalid PROXY protocol header");
            return false;
        }

        data = data[consumed..];
        if (state.SourceEndPoint is { } source)
        {
            RemoteEndPoint = source;
            LocalEndPoint = state.DestinationEndPoint;
        }

        state.Listener.EnqueueAfterHeader(this);
        return true;
    }

    /// <summary>The peer closed (FIN) before the header was complete.</summary>
    private void OnFinBeforeProxyHeader()
        => RejectProxyHeader(EpollCloseReason.ProxyHeaderInvalid, "the peer closed the connection before its PROXY protocol header was complete");

    /// <summary>The loop's deadline check found the header still incomplete at its deadline.</summary>
    public void OnProxyHeaderTimedOut()
    {
        if (_fd >= 0 && AwaitingProxyHeader)
        {
            RejectProxyHeader(EpollCloseReason.ProxyHeaderTimeout, $"no complete PROXY protocol header within {_proxyHeader!.Endpoint.HeaderTimeoutMs} ms");
        }
    }

    private void RejectProxyHeader(EpollCloseReason reason, string why)
    {
        string remote = RemoteEndPoint?.ToString() ?? "?";
        if (reason == EpollCloseReason.ProxyHeaderTimeout)
        {
            EpollLog.ProxyHeaderTimedOut(_logger, ConnectionId, remote, why);
        }
        else
        {
            EpollLog.ProxyHeaderInvalid(_logger, ConnectionId, remote, why);
        }

        AbortOnLoop(new ConnectionAbortedException(why), reason);
    }

    /// <summary>At the close: a connection closed while it waited for its header was never handed over, so the
    /// listener stops counting it as pending.</summary>
    private void AbandonProxyHeader()
    {
        if (_proxyHeader is { Pending: true } state)
        {
            Loop.StopAwaitingProxyHeader(state);
            state.Abandon();
            state.Listener.OnHandOverAbandoned();
        }
    }
}

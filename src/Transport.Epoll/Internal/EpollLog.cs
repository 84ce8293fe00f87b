using Microsoft.Extensions.Logging;

namespace Transport.Epoll.Internal;

/// <summary>
/// Every log line of the transport, in the logger category <see cref="Category"/>, with stable event ids in ranges by
/// where the event happens: 1-99 event loops, 100-199 listeners and accept, 200-299 connections, 300-399 sendfile and
/// zero-copy sends, 400-499 connections addressed by id. An id, once shipped, keeps its meaning (log queries and alerts
/// filter on it); a new event takes the next free id of its range, under its heading below. EpollLogTests checks that every id lies in the range of its
/// heading, that the headings are these ranges, and that no two events share an id.
/// </summary>
internal static partial class EpollLog
{
    /// <summary>The logger category of every transport event (README.md and docs/METRICS.md name it).</summary>
    public const string Category = "Transport.Epoll";

    // 1-99: event loops.
    [LoggerMessage(1, LogLevel.Critical, "Event loop epoll-{Loop} crashed; its connections are no longer served.")]
    public static partial void LoopCrashed(ILogger logger, int loop, Exception exception);

    [LoggerMessage(2, LogLevel.Error, "Event loop epoll-{Loop}: epoll_wait failed with {Error}.")]
    public static partial void EpollWaitFailed(ILogger logger, int loop, string error);

    [LoggerMessage(3, LogLevel.Error, "Event loop epoll-{Loop}: waking it through its eventfd failed with {Error}.")]
    public static partial void WakeUpFailed(ILogger logger, int loop, string error);

    [LoggerMessage(4, LogLevel.Error, "Event loop epoll-{Loop}: the handler of id {Id:X} threw; it is closed and the loop goes on.")]
    public static partial void HandlerFailed(ILogger logger, int loop, ulong id, Exception exception);

    [LoggerMessage(5, LogLevel.Error, "Event loop epoll-{Loop}: scheduled work threw; the loop goes on.")]
    public static partial void ScheduledWorkFailed(ILogger logger, int loop, Exception exception);

    [LoggerMessage(6, LogLevel.Debug, "Started {Count} event loops.")]
    public static partial void LoopsStarted(ILogger logger, int count);

    [LoggerMessage(7, LogLevel.Debug, "Stopped {Count} event loops.")]
    public static partial void LoopsStopped(ILogger logger, int count);

    [LoggerMessage(8, LogLevel.Error, "Event loop epoll-{Loop}: a turn failed; the loop goes on.")]
    public static partial void TurnFailed(ILogger logger, int loop, Exception exception);

    [LoggerMessage(9, LogLevel.Warning, "Event loop epoll-{Loop} spent {Milliseconds} ms in one turn serving {What} on {EndPoint}; every connection of the loop waited. Code that blocks must not run on the loop (UnsafePreferInlineScheduling). Reported once per endpoint; epoll.loop.stalls counts each.")]
    public static partial void LoopStalled(ILogger logger, int loop, long milliseconds, string what, string endPoint);

    // 100-199: listeners and accept.
    [LoggerMessage(100, LogLevel.Debug, "Listening on {EndPoint} with {Sockets} socket(s), accept distribution {Distribution}.")]
    public static partial void Listening(ILogger logger, string endPoint, int sockets, EpollAcceptDistribution distribution);

    [LoggerMessage(101, LogLevel.Warning, "accept4 on {EndPoint} failed with {Error}: out of resources; accepting pauses for {DelayMs} ms while existing connections go on.")]
    public static partial void AcceptBackOff(ILogger logger, string endPoint, string error, int delayMs);

    [LoggerMessage(102, LogLevel.Debug, "accept4 on {EndPoint} failed with {Error} for one connection; accepting goes on.")]
    public static partial void AcceptTransientError(ILogger logger, string endPoint, string error);

    [LoggerMessage(103, LogLevel.Error, "accept4 on {EndPoint} failed with {Error}; this loop stops accepting on it.")]
    public static partial void AcceptFailed(ILogger logger, string endPoint, string error);

    [LoggerMessage(104, LogLevel.Debug, "Accepting on {EndPoint} paused: {Pending} accepted connections wait for the server to take them.")]
    public static partial void AcceptPaused(ILogger logger, string endPoint, int pending);

    [LoggerMessage(105, LogLevel.Warning, "Could not set up accepted connection on {EndPoint}: {Error}.")]
    public static partial void ConnectionSetupFailed(ILogger logger, string endPoint, string error);

    [LoggerMessage(106, LogLevel.Warning, "Refused a connection on {EndPoint} from {Remote}: not a trusted proxy, and the endpoint requires the PROXY protocol ({HeldBack} more refused since the previous such message; logged at most once a second, the counter epoll.proxy_protocol.untrusted counts them all).")]
    public static partial void ProxyProtocolUntrusted(ILogger logger, string endPoint, string remote, long heldBack);

    [LoggerMessage(107, LogLevel.Debug, "{EndPoint} requires a PROXY protocol header within {TimeoutMs} ms from one of: {Trusted}.")]
    public static partial void ProxyProtocolRequired(ILogger logger, string endPoint, string trusted, long timeoutMs);

    [LoggerMessage(108, LogLevel.Error, "Connection {ConnectionId} on {EndPoint} did not pass through the epoll transport's PROXY protocol reader (is the endpoint served by another transport?); it is aborted.")]
    public static partial void ProxyProtocolNotApplied(ILogger logger, string connectionId, string endPoint);

    // Shared ports (AllowPortSharing): 110 on.
    [LoggerMessage(110, LogLevel.Information, "{EndPoint} is shared with other processes (AllowPortSharing) and net.ipv4.tcp_migrate_req is 0: when this process stops, it accepts what is queued before it closes the port, but a connection the kernel queues in the microseconds in between is reset. Set net.ipv4.tcp_migrate_req=1 to have the kernel move it to another process.")]
    public static partial void SharedPortWithoutMigration(ILogger logger, string endPoint);

    [LoggerMessage(111, LogLevel.Debug, "Closing shared {EndPoint}: net.ipv4.tcp_migrate_req is 1, the kernel moves its queued connections to another process on the port.")]
    public static partial void SharedPortMigrating(ILogger logger, string endPoint);

    [LoggerMessage(112, LogLevel.Debug, "Closing shared {EndPoint}: accepted {Count} queued connection(s) before closing the listener (net.ipv4.tcp_migrate_req is 0).")]
    public static partial void SharedPortDrained(ILogger logger, string endPoint, int count);

    // 200-299: connections.
    [LoggerMessage(200, LogLevel.Debug, "Connection {ConnectionId} closed: {Reason}.")]
    public static partial void ConnectionClosed(ILogger logger, string connectionId, EpollCloseReason reason);

    [LoggerMessage(201, LogLevel.Debug, "Connection {ConnectionId} reset by peer.")]
    public static partial void ConnectionReset(ILogger logger, string connectionId);

    [LoggerMessage(202, LogLevel.Warning, "Connection {ConnectionId}: socket error {Error}.")]
    public static partial void ConnectionError(ILogger logger, string connectionId, string error);

    [LoggerMessage(203, LogLevel.Debug, "Connection {ConnectionId} aborted by the application: {Reason}.")]
    public static partial void ConnectionAborted(ILogger logger, string connectionId, string reason);

    [LoggerMessage(204, LogLevel.Warning, "Connection {ConnectionId} did not finish sending within {Seconds} s of being disposed; it is aborted.")]
    public static partial void DisposeDrainTimedOut(ILogger logger, string connectionId, int seconds);

    [LoggerMessage(205, LogLevel.Error, "Connection {ConnectionId}: the application's output failed; the connection is aborted.")]
    public static partial void OutputFailed(ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(206, LogLevel.Warning, "Connection {ConnectionId} aborted with {Bytes} bytes of output not sent: {Reason}")]
    public static partial void AbortedWithUnsentOutput(ILogger logger, string connectionId, long bytes, string reason);

    [LoggerMessage(207, LogLevel.Error, "Connection {ConnectionId}: a ConnectionClosed callback threw.")]
    public static partial void ConnectionClosedCallbackFailed(ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(208, LogLevel.Debug, "Connection {ConnectionId} timed out: the peer stopped acknowledging (TCP_USER_TIMEOUT or keepalive).")]
    public static partial void ConnectionTimedOut(ILogger logger, string connectionId);

    [LoggerMessage(209, LogLevel.Warning, "Connection {ConnectionId} from {Remote} closed: {Reason}.")]
    public static partial void ProxyHeaderInvalid(ILogger logger, string connectionId, string remote, string reason);

    [LoggerMessage(210, LogLevel.Warning, "Connection {ConnectionId} from {Remote} closed: {Reason}.")]
    public static partial void ProxyHeaderTimedOut(ILogger logger, string connectionId, string remote, string reason);

    // 300-399: sendfile and zero-copy sends.
    [LoggerMessage(300, LogLevel.Debug, "Connection {ConnectionId}: sendfile(2) refused the file ({Error}); it is copied through the pipe instead.")]
    public static partial void SendFileNotSupported(ILogger logger, string connectionId, string error);

    [LoggerMessage(301, LogLevel.Warning, "Connection {ConnectionId}: a file could not be sent and the connection is aborted: {Reason}")]
    public static partial void SendFileFailed(ILogger logger, string connectionId, string reason);

    [LoggerMessage(302, LogLevel.Debug, "Connection {ConnectionId}: zero-copy sends turned off ({Reason}).")]
    public static partial void ZeroCopyOff(ILogger logger, string connectionId, string reason);

    [LoggerMessage(303, LogLevel.Warning, "Connection {ConnectionId}: closed with {Count} zero-copy sends the kernel had not completed after {Milliseconds} ms; their buffers are not reused.")]
    public static partial void ZeroCopyCompletionsTimedOut(ILogger logger, string connectionId, int count, long milliseconds);

    // 400-499: connections addressed by id.
    [LoggerMessage(400, LogLevel.Debug, "Connection {ConnectionId} is addressable by id.")]
    public static partial void MadeAddressable(ILogger logger, string connectionId);

    [LoggerMessage(401, LogLevel.Debug, "Connection {ConnectionId} closed by id, after what was queued before the close.")]
    public static partial void ClosedById(ILogger logger, string connectionId);

    [LoggerMessage(402, LogLevel.Warning, "Connection {ConnectionId} is no longer addressable by id: {Why}. What was queued by id is dropped.")]
    public static partial void AddressingRevoked(ILogger logger, string connectionId, string why);
}

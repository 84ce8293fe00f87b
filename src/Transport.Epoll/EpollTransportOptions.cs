namespace Transport.Epoll;

/// <summary>Options for the epoll transport. Bound from the <c>Kestrel:Transport:Epoll</c> configuration section.</summary>
/// <remarks>
/// Every property is a plain value; nothing here changes another property. Nonsense values are rejected at
/// start-up by a validator whose message names the option and its allowed range.
/// </remarks>
public sealed class EpollTransportOptions
{
    /// <summary>The configuration section the options bind from when the transport is added to a web host.</summary>
    public const string ConfigurationSection = "Kestrel:Transport:Epoll";

    /// <summary>Number of event loops, each a dedicated thread named <c>epoll-N</c> with its own epoll instance.</summary>
    /// <remarks>Defaults to <see cref="Environment.ProcessorCount"/>. Allowed: 1 to 256.</remarks>
    public int ThreadCount { get; set; } = Environment.ProcessorCount;

    /// <summary>
    /// The most bytes received from the socket and not yet consumed by the application. Past it the transport stops
    /// reading, so the kernel's receive window pushes back on the peer.
    /// </summary>
    /// <remarks>Defaults to 1 MiB. <see langword="null"/> or 0 means no limit, which lets a fast peer make the server
    /// buffer without bound: a security risk.</remarks>
    public long? MaxReadBufferSize { get; set; } = 1024 * 1024;

    /// <summary>
    /// The most bytes written by the application and not yet taken by the kernel. Past it the application's
    /// <c>FlushAsync</c> waits, so a peer that never reads cannot make the server hold unbounded memory.
    /// </summary>
    /// <remarks>Defaults to 64 KiB. <see langword="null"/> or 0 means no limit: a security risk.</remarks>
    public long? MaxWriteBufferSize { get; set; } = 64 * 1024;

    /// <summary>
    /// How long an event loop polls for more events (<c>epoll_wait</c> with a zero timeout, and its work queue) before
    /// it blocks in <c>epoll_wait</c>, while events keep arriving within this window. A blocked loop is woken by an
    /// interrupt and the scheduler, and on a virtual machine an idle CPU must first be resumed by the hypervisor: tens of
    /// microseconds per request at one connection, which the spin saves. The spin adapts: a loop spins only when its
    /// previous wait ended within the window, and stops after one spin that found nothing, so an idle loop, or one
    /// whose requests come further apart, does not spin and uses no CPU. A loop with more than 8 connections spins only
    /// while other threads hand it work (the thread pool's flushes): their requests share its wake-ups, and spinning
    /// between them would only turn idle time into polling.
    /// </summary>
    /// <remarks>Defaults to 50 microseconds (measured: benchmarks/README.md). Allowed: <see cref="TimeSpan.Zero"/> (off)
    /// to 1 ms.</remarks>
    public TimeSpan SpinBeforeWait { get; set; } = TimeSpan.FromMicroseconds(50);

    /// <summary>Sets <c>TCP_NODELAY</c> on accepted TCP connections (turns off Nagle's algorithm).</summary>
    /// <remarks>Defaults to <see langword="true"/>.</remarks>
    public bool NoDelay { get; set; } = true;

    /// <summary>The <c>listen(2)</c> backlog: connections the kernel completes before the server accepts them.</summary>
    /// <remarks>Defaults to 512. Allowed: 1 to 65535 (the kernel caps it at <c>net.core.somaxconn</c>).</remarks>
    public int Backlog { get; set; } = 512;

    /// <summary>How accepted connections are spread over the event loops.</summary>
    /// <remarks>Defaults to <see cref="EpollAcceptDistribution.Exclusive"/>, chosen by measurement (README, "Benchmarks":
    /// as fast or slightly faster here) and because its port is never silently shared with another process.
    /// See the enum's values for the trade-offs.</remarks>
    public EpollAcceptDistribution AcceptDistribution { get; set; } = EpollAcceptDistribution.Exclusive;

    /// <summary>
    /// Lets other processes of the same user that also set this option listen on the same TCP port
    /// (<c>SO_REUSEPORT</c> on every listening socket, and no check that the port is free): a new version of the app
    /// starts on the port while the old one still serves, then the old one stops (zero-downtime restart). The kernel
    /// spreads new connections over every process on the port. When a process stops, what happens to connections
    /// waiting in its accept queue depends on <c>net.ipv4.tcp_migrate_req</c>: 1 moves them to another process on the
    /// port; with 0 the transport accepts what is queued before it closes the listener (see docs/DEPLOYMENT.md).
    /// </summary>
    /// <remarks>Defaults to <see langword="false"/>: a port that another socket holds fails start with
    /// <c>AddressInUseException</c>, whatever <see cref="AcceptDistribution"/> is. The kernel only knows
    /// <c>SO_REUSEPORT</c>, not this option: a process with <see cref="EpollAcceptDistribution.ReusePort"/> already has
    /// it on its sockets, so one with this option can join it although it did not opt in. Not used for Unix sockets
    /// and handed-over fds (<c>ListenHandle</c>): a handed-over fd is already shared by whoever holds it.</remarks>
    public bool AllowPortSharing { get; set; }

    /// <summary>
    /// The most accepted connections that wait for the server to take them. When the application is not taking
    /// connections, the loops stop accepting and the kernel's backlog holds the rest.
    /// </summary>
    /// <remarks>Defaults to 1024. Allowed: 1 to 1,000,000.</remarks>
    public int MaxPendingAccepts { get; set; } = 1024;

    /// <summary>
    /// Runs the application's code inline on the connection's event loop instead of the thread pool. This removes a
    /// thread hop and a wake-up per request, and is much faster, but a request that blocks (synchronous I/O, a
    /// lock, a long computation) stalls every connection on the same loop.
    /// </summary>
    /// <remarks>Defaults to <see langword="false"/>. The equivalent of the Sockets transport's
    /// <c>UnsafePreferInlineScheduling</c>.</remarks>
    public bool UnsafePreferInlineScheduling { get; set; }

    /// <summary>
    /// Lets a flush made on a thread other than the connection's loop (the thread pool, where the application runs by
    /// default) write to the socket right there, when nothing else is being sent on that connection: one
    /// <c>sendmsg</c> instead of waking the loop to make it. A partial write, an error or the output's end still go
    /// to the loop. When <see langword="false"/>, every send is made by the loop.
    /// </summary>
    /// <remarks>Defaults to <see langword="true"/>. Not used with <see cref="ZeroCopyThreshold"/> (zero-copy sends
    /// are always the loop's).</remarks>
    public bool SendOnFlushingThread { get; set; } = true;

    /// <summary>
    /// Sends files given to <see cref="IConnectionSendFileFeature.SendFileAsync"/> (and HTTP responses, with
    /// <c>UseEpollSendFile()</c>) with <c>sendfile(2)</c>, from the page cache to the socket without a copy through
    /// user space. When <see langword="false"/> the same calls read the file into the pipe in chunks.
    /// </summary>
    /// <remarks>Defaults to <see langword="true"/>.</remarks>
    public bool EnableSendFile { get; set; } = true;

    /// <summary>
    /// <c>TCP_NOTSENT_LOWAT</c> (tcp(7)): the most bytes a connection keeps in the kernel that are not sent yet. A write
    /// or <c>sendfile</c> into a socket whose peer reads slowly then takes about this much instead of filling the
    /// whole send buffer (megabytes, which the kernel grows by itself), so a slow reader costs the loop, and the
    /// kernel's memory, little; and the loop hears EPOLLOUT only when the socket can take more of it.
    /// </summary>
    /// <remarks>Defaults to 128 KiB. <see langword="null"/> or 0 leaves the kernel's setting
    /// (<c>net.ipv4.tcp_notsent_lowat</c>, unlimited unless changed).</remarks>
    public int? TcpNotSentLowWatermark { get; set; } = 128 * 1024;

    /// <summary>
    /// Sends of at least this many bytes use <c>MSG_ZEROCOPY</c>: the kernel sends from the pipe's memory instead of
    /// copying it, and the memory is released only when the kernel says (on the socket's error queue) that it is done
    /// with it. A connection turns it off by itself when the kernel reports it copied anyway (always on loopback, and
    /// on devices without scatter-gather) or when <c>ENOBUFS</c> says the pinned pages exceed the socket's optmem limit.
    /// Bytes sent but waiting for their completion have a budget of their own, <see cref="MaxWriteBufferSize"/>,
    /// on top of the bytes not sent yet, so a connection holds at most about twice that much output; a connection at
    /// its budget sends more only when the kernel completes a send, which it does once the peer acknowledged the
    /// data: raise <see cref="MaxWriteBufferSize"/> to at least the bandwidth-delay product when you turn this on.
    /// </summary>
    /// <remarks>Defaults to <see langword="null"/> (off): it pays only for large sends on a real network card (the
    /// kernel's own guidance is sends of about 10 KB and more), costs a notification per send, and cannot be measured
    /// on loopback, where the kernel always copies. Allowed: 1024 to 2^30 bytes; null or 0 for off.</remarks>
    public int? ZeroCopyThreshold { get; set; }

    /// <summary>
    /// When <see langword="false"/>, a peer's FIN (it shut down its sending side) completes <c>Input</c> and also
    /// fires <c>ConnectionClosed</c>, as the Sockets transport does: HTTP relies on it to abort requests of clients
    /// that went away. When <see langword="true"/>, a FIN only completes <c>Input</c> and the connection stays open
    /// for writing until the application completes <c>Output</c>; <c>ConnectionClosed</c> fires when the socket is closed.
    /// For raw protocols that half-close on purpose.
    /// </summary>
    /// <remarks>Defaults to <see langword="false"/>.</remarks>
    public bool AllowHalfOpen { get; set; }

    /// <summary>
    /// Closes a connection that saw no successful read or write for this long, with the close reason
    /// <see cref="EpollCloseReason.IdleTimeout"/> (libsock's touch). For raw protocols without a timeout of their own;
    /// HTTP has Kestrel's <c>KeepAliveTimeout</c> and request timeouts. Checked by each loop every eighth of the
    /// timeout (at most every second), so a connection closes between 1 and 1.125 times the timeout after it went quiet.
    /// </summary>
    /// <remarks>Defaults to <see langword="null"/> (off). Allowed: 10 ms to 24 hours.</remarks>
    public TimeSpan? IdleTimeout { get; set; }

    /// <summary>
    /// Turns on TCP keepalive (<c>SO_KEEPALIVE</c>) and sends the first probe after the connection was quiet this
    /// long (<c>TCP_KEEPIDLE</c>), so a peer that vanished without a FIN or RST is detected.
    /// </summary>
    /// <remarks>Defaults to <see langword="null"/>: keepalive off (the kernel's default). Allowed: 1 s to 24 hours.</remarks>
    public TimeSpan? TcpKeepAliveTime { get; set; }

    /// <summary>Time between keepalive probes (<c>TCP_KEEPINTVL</c>); used only with <see cref="TcpKeepAliveTime"/>.</summary>
    /// <remarks>Defaults to <see langword="null"/>: the kernel's (net.ipv4.tcp_keepalive_intvl, 75 s). Allowed: 1 s to 1 hour.</remarks>
    public TimeSpan? TcpKeepAliveInterval { get; set; }

    /// <summary>Unanswered keepalive probes before the connection is dropped (<c>TCP_KEEPCNT</c>); used only with
    /// <see cref="TcpKeepAliveTime"/>.</summary>
    /// <remarks>Defaults to <see langword="null"/>: the kernel's (net.ipv4.tcp_keepalive_probes, 9). Allowed: 1 to 127.</remarks>
    public int? TcpKeepAliveProbeCount { get; set; }

    /// <summary>
    /// How long sent data may stay unacknowledged before the kernel drops the connection (<c>TCP_USER_TIMEOUT</c>,
    /// tcp(7)): detects a dead peer while the server is sending, which keepalive does not.
    /// </summary>
    /// <remarks>Defaults to <see langword="null"/>: the kernel's retransmission limits (about 15 minutes). Allowed: 1 s to 24 hours.</remarks>
    public TimeSpan? TcpUserTimeout { get; set; }

    /// <summary>
    /// A loop turn that runs longer than this is reported: a warning, once per endpoint, naming the connection the loop
    /// was serving, and the <c>epoll.loop.stalls</c> counter. A turn is the loop's own work plus, with
    /// <see cref="UnsafePreferInlineScheduling"/>, the application code it runs; code that blocks there (synchronous
    /// I/O, a lock, a long computation) stalls every connection on the loop, and this is how you find out.
    /// </summary>
    /// <remarks>Defaults to 100 ms: far above a healthy turn (microseconds), below what users notice. Checked by one
    /// thread per transport at half the threshold. Allowed: 10 ms to 1 hour; <see langword="null"/> or zero for off.</remarks>
    public TimeSpan? LoopStallThreshold { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// The PROXY protocol for the endpoints on <see cref="ProxyProtocolOptions.Ports"/>, from configuration
    /// (<c>Kestrel:Transport:Epoll:ProxyProtocol:Ports:0</c>, <c>...:TrustedProxies:0</c>, <c>...:HeaderTimeout</c>).
    /// In code, <c>listenOptions.UseProxyProtocol(...)</c> sets it per endpoint and wins over this.
    /// </summary>
    /// <remarks>Defaults to no port. With ports, at least one trusted proxy is required.</remarks>
    public ProxyProtocolOptions ProxyProtocol { get; } = new();

    /// <summary>
    /// How long <see cref="EpollConnectionFactory.ConnectAsync"/> waits for one address to accept the connection before
    /// it gives up with a <see cref="TimeoutException"/>. Without it a connect to a host that drops SYNs (a firewall, a
    /// listener whose backlog is full) waits for the kernel's SYN retries (net.ipv4.tcp_syn_retries: about two
    /// minutes) before failing. Only outbound connections use it.
    /// </summary>
    /// <remarks>Defaults to 30 seconds. Allowed: 10 ms to 1 hour.</remarks>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);
}

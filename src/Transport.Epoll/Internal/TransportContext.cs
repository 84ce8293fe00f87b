using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace Transport.Epoll.Internal;

/// <summary>What every loop, listener and connection of one factory shares: options, logger, metrics, pools.</summary>
internal sealed class TransportContext
{
    private readonly IMemoryPoolFactory<byte>? _memoryPoolFactory;

    public TransportContext(EpollTransportOptions options, ILogger logger, EpollMetrics metrics, IMemoryPoolFactory<byte>? memoryPoolFactory)
    {
        Options = options;
        Logger = logger;
        Metrics = metrics;
        _memoryPoolFactory = memoryPoolFactory;

        // The application side runs on the thread pool unless the user asked for inline scheduling, in which case
        // it runs on the connection's loop, inside the transport's flush of received bytes.
        ApplicationScheduler = options.UnsafePreferInlineScheduling ? PipeScheduler.Inline : PipeScheduler.ThreadPool;
        MaxReadBufferSize = options.MaxReadBufferSize ?? 0;
        MaxWriteBufferSize = options.MaxWriteBufferSize ?? 0;

        // The validator has checked the values (start-up fails before this with a message naming the option).
        ConfiguredProxyProtocol = options.ProxyProtocol.Ports.Count > 0
            ? ProxyProtocolEndpoint.Create(options.ProxyProtocol, "EpollTransportOptions.ProxyProtocol")
            : null;
    }

    /// <summary>The PROXY protocol for the ports of <see cref="EpollTransportOptions.ProxyProtocol"/>, when any.</summary>
    public ProxyProtocolEndpoint? ConfiguredProxyProtocol { get; }

    public EpollTransportOptions Options { get; }

    /// <summary>The connections of this transport that opted in to addressing by id.</summary>
    public AddressableConnections Addressable { get; } = new();

    public ILogger Logger { get; }

    public EpollMetrics Metrics { get; }

    public PipeScheduler ApplicationScheduler { get; }

    public long MaxReadBufferSize { get; }

    public long MaxWriteBufferSize { get; }

    /// <summary>One pool per loop: Kestrel's pinned block pool when the host provides it, so the kernel can be
    /// handed pointers into it without pinning per call.</summary>
    public MemoryPool<byte> CreateMemoryPool() => _memoryPoolFactory?.Create() ?? MemoryPool<byte>.Shared;

    /// <summary>
    /// A stopped loop's pool: disposed, so a restarted loop group does not keep the old one's blocks. Memory still in a
    /// pipe stays valid (the pool only stops taking blocks back); renting from it afterwards throws, as from the
    /// Sockets transport's pools once its listener is disposed.
    /// </summary>
    public void ReleaseMemoryPool(MemoryPool<byte> pool)
    {
        // Only what the factory created is ours: the shared pool belongs to the process.
        if (_memoryPoolFactory is not null && !ReferenceEquals(pool, MemoryPool<byte>.Shared))
        {
            pool.Dispose();
        }
    }
}

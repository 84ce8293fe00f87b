using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Transport.Epoll.Internal;

namespace Transport.Epoll.Benchmarks;

/// <summary>
/// The transport's steady read and write path, without Kestrel: a client sends 64 bytes, the server side reads them
/// from the connection's Input and writes them to its Output, the client receives them. The benchmark method uses a
/// pooling async builder and the client's ValueTask socket calls (both allocation-free in steady state), so the
/// MemoryDiagnoser's figure is the transport's own: it must be 0 B. It never blocks: with inline scheduling its
/// continuations run on the event loop, where a blocking call would stall the very loop that must send the reply.
/// </summary>
[MemoryDiagnoser]
public class ConnectionRoundTripBenchmarks
{
    private readonly byte[] _message = new byte[64];
    private readonly byte[] _reply = new byte[64];
    private EpollTransportFactory? _factory;
    private IConnectionListener? _listener;
    private ConnectionContext? _connection;
    private Socket? _client;
    private WebApplication? _host;

    [Params(false, true)]
    public bool InlineScheduling { get; set; }

    [GlobalSetup]
    public async Task StartAsync()
    {
        var options = new EpollTransportOptions { ThreadCount = 1, UnsafePreferInlineScheduling = InlineScheduling };

        // Kestrel's pinned block pool, as a real host hands it to the transport (MemoryPool<byte>.Shared, the
        // fallback without a host, allocates an owner object per rented block).
        _host = WebApplication.CreateSlimBuilder().Build();
        var pools = _host.Services.GetRequiredService<IMemoryPoolFactory<byte>>();
        _factory = new EpollTransportFactory(Options.Create(options), NullLoggerFactory.Instance, pools);
        _listener = await _factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        _client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await _client.ConnectAsync(_listener.EndPoint);
        _connection = await _listener.AcceptAsync() ?? throw new InvalidOperationException("No connection.");
    }

    [GlobalCleanup]
    public async Task StopAsync()
    {
        _client?.Dispose();
        if (_connection is not null)
        {
            await _connection.DisposeAsync();
        }

        if (_listener is not null)
        {
            await _listener.DisposeAsync();
        }

        if (_factory is not null)
        {
            await _factory.DisposeAsync();
        }

        if (_host is not null)
        {
            await _host.DisposeAsync();
        }
    }

    [Benchmark]
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReceiveAndSend64()
    {
        await _client!.SendAsync(_message.AsMemory(), SocketFlags.None);
        PipeReader input = _connection!.Transport.Input;
        PipeWriter output = _connection.Transport.Output;
        int echoed = 0;
        while (echoed < _message.Length)
        {
            ReadResult result = await input.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                output.Write(segment.Span);
                echoed += segment.Length;
            }

            input.AdvanceTo(result.Buffer.End);
        }

        await output.FlushAsync();
        int received = 0;
        while (received < _reply.Length)
        {
            received += await _client.ReceiveAsync(_reply.AsMemory(received), SocketFlags.None);
        }

        return received;
    }
}

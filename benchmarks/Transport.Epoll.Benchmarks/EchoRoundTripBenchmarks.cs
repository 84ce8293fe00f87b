using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace Transport.Epoll.Benchmarks;

/// <summary>The transports compared side by side.</summary>
public enum TransportKind
{
    Epoll,
    Sockets,
}

/// <summary>
/// One 64-byte message to a raw TCP echo handler on loopback and back, on each transport: the transport's
/// per-message latency with HTTP out of the way. The load runner (benchmarks/load) measures throughput.
/// </summary>
[MemoryDiagnoser]
public class EchoRoundTripBenchmarks
{
    private readonly byte[] _message = new byte[64];
    private readonly byte[] _reply = new byte[64];
    private WebApplication? _app;
    private Socket? _client;

    [Params(TransportKind.Epoll, TransportKind.Sockets)]
    public TransportKind Transport { get; set; }

    [GlobalSetup]
    public async Task StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (Transport == TransportKind.Epoll)
        {
            builder.WebHost.UseEpollTransport();
        }

        ListenOptions? endpoint = null;
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0, options =>
        {
            options.UseConnectionHandler<EchoHandler>();
            endpoint = options;
        }));

        _app = builder.Build();
        await _app.StartAsync();

        _client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await _client.ConnectAsync(endpoint!.EndPoint);
    }

    [GlobalCleanup]
    public async Task StopAsync()
    {
        _client?.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }

    [Benchmark]
    public async Task<int> PingPong64()
    {
        Socket client = _client!;
        await client.SendAsync(_message, SocketFlags.None);
        int received = 0;
        while (received < _reply.Length)
        {
            int n = await client.ReceiveAsync(_reply.AsMemory(received), SocketFlags.None);
            if (n == 0)
            {
                throw new InvalidOperationException("The echo server closed the connection.");
            }

            received += n;
        }

        return received;
    }

    private sealed class EchoHandler : ConnectionHandler
    {
        public override async Task OnConnectedAsync(ConnectionContext connection)
        {
            PipeReader input = connection.Transport.Input;
            PipeWriter output = connection.Transport.Output;
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    output.Write(segment.Span);
                }

                input.AdvanceTo(result.Buffer.End);
                FlushResult flush = await output.FlushAsync();
                if (result.IsCompleted || flush.IsCompleted)
                {
                    break;
                }
            }
        }
    }
}

using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class RawConnectionTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task A_ConnectionHandler_echoes_raw_bytes(string transport)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            ConfigureListen = listen => listen.UseConnectionHandler<EchoConnectionHandler>(),
            Output = output,
        });
        using var socket = await Client.ConnectAsync(server.EndPoint);

        foreach (int size in new[] { 1, 100, 4096, 65536, 1_000_000 })
        {
            byte[] data = Client.RandomBytes(size, seed: size);
            var receive = socket.ReceiveExactlyAsync(size);
            await socket.SendAllAsync(data);
            Assert.Equal(Client.Sha256(data), Client.Sha256(await receive));
        }
    }

    [Theory, BothTransports]
    public async Task The_connection_reports_its_endpoints_and_a_unique_id(string transport)
    {
        var seen = new TaskCompletionSource<(string Id, string? Local, string? Remote)>(TaskCreationOptions.RunContinuationsAsynchronously);
        var ids = new System.Collections.Concurrent.ConcurrentBag<string>();
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            ids.Add(connection.ConnectionId);
            seen.TrySetResult((connection.ConnectionId, connection.LocalEndPoint?.ToString(), connection.RemoteEndPoint?.ToString()));
            await Handlers.EchoAsync(connection);
        }, output: output);

        using var first = await Client.ConnectAsync(server.EndPoint);
        var (id, local, remote) = await seen.Task.WithTimeout();
        Assert.False(string.IsNullOrEmpty(id));
        Assert.Equal(server.EndPoint.ToString(), local);
        Assert.Equal(first.LocalEndPoint!.ToString(), remote);

        for (int i = 0; i < 20; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync("x");
            Assert.Equal("x", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(1)));
        }

        Assert.Equal(21, ids.Count);
        Assert.Equal(21, ids.Distinct().Count());
    }

    /// <summary>
    /// Whoever holds the ConnectionClosed token must see it fire, even when the connection is disposed right after it
    /// closed (Kestrel disposes it as soon as the handler returns). The Sockets transport's DisposeAsync waits for the
    /// token's callbacks to have run.
    /// </summary>
    [Theory, BothTransports]
    public async Task ConnectionClosed_has_fired_when_DisposeAsync_returns(string transport)
    {
        const int count = 200;
        int fired = 0, notFired = 0;
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            var token = connection.ConnectionClosed;
            int callback = 0;
            using var registration = token.Register(() => Interlocked.Exchange(ref callback, 1));
            await Handlers.EchoAsync(connection);
            await connection.DisposeAsync();
            Interlocked.Increment(ref Volatile.Read(ref callback) == 1 && token.IsCancellationRequested ? ref fired : ref notFired);
        }, output: output);

        int next = -1;
        await Task.WhenAll(Enumerable.Range(0, 8).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) < count)
            {
                using var socket = await Client.ConnectAsync(server.EndPoint);
                await socket.SendAllAsync("bye");
                socket.Shutdown(SocketShutdown.Send);
                Assert.Equal("bye", Encoding.ASCII.GetString(await socket.ReceiveToEndAsync()));
            }
        })).WithTimeout(Timeouts.Bulk);

        Assert.True(await Poll.UntilAsync(() => Volatile.Read(ref fired) + Volatile.Read(ref notFired) == count), "Not every handler finished.");
        Assert.Equal(0, notFired);
    }

    /// <summary>
    /// A handler may dispose its connection itself; Kestrel disposes it again after the handler returns. Neither
    /// call may hang, or Kestrel keeps waiting for the connection at shutdown until the shutdown timeout (15 s here).
    /// </summary>
    [Theory, BothTransports]
    public async Task A_connection_the_handler_disposes_itself_does_not_hold_up_host_shutdown(string transport)
    {
        var handlerDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            await Handlers.EchoAsync(connection);
            await connection.DisposeAsync();
            await connection.DisposeAsync();
            handlerDone.TrySetResult();
        }, output: output);
        try
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync("bye");
            socket.Shutdown(SocketShutdown.Send);
            Assert.Equal("bye", Encoding.ASCII.GetString(await socket.ReceiveToEndAsync()));
            await handlerDone.Task.WithTimeout();
        }
        finally
        {
            var stopwatch = System.Diagnostics.Stopwatch.StartNew();
            await server.DisposeAsync();
            Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(5), $"Stopping the host took {stopwatch.Elapsed.TotalSeconds:0.0} s.");
        }
    }
}

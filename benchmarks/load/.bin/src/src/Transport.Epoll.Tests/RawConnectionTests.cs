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
}

using System.Net.Sockets;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class MetricsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_meter_counts_connections_bytes_and_close_reasons()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, Handlers.EchoUntilResetAsync, output: output);

        var totals = await TransportMetrics.CollectAsync(server, async () =>
        {
            for (int i = 0; i < 10; i++)
            {
                using var socket = await Client.ConnectAsync(server.EndPoint);
                await socket.SendAllAsync(new byte[1000]);
                await socket.ReceiveExactlyAsync(1000);
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync());
            }

            var reset = await Client.ConnectAsync(server.EndPoint);
            await reset.SendAllAsync("x");
            await reset.ReceiveExactlyAsync(1);
            reset.Reset();

            // Closes are counted on the loop after the client already saw EOF: wait for them.
            Assert.True(await Poll.UntilAsync(() => server.ConnectionCount == 11));
        });

        foreach (var (name, value) in totals.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            output.WriteLine($"{name} = {value}");
        }

        Assert.Equal(11, totals.GetValueOrDefault("epoll.connections.accepted"));
        Assert.True(totals.GetValueOrDefault("epoll.bytes.received") >= 10_001);
        Assert.True(totals.GetValueOrDefault("epoll.bytes.sent") >= 10_001);
        Assert.True(totals.GetValueOrDefault("epoll.syscalls.read") > 0);
        Assert.True(totals.GetValueOrDefault("epoll.syscalls.epoll_wait") > 0);
    }
}

using System.Net.Sockets;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>Heavy: in the serial collection so it has the machine to itself.</summary>
[Collection(SerialCollection.Name)]
public sealed class ConcurrencyTests(ITestOutputHelper output)
{
    private const int Connections = 1000;

    [Theory, BothTransports]
    public async Task A_thousand_concurrent_connections_each_get_their_own_bytes_back(string transport)
    {
        int active = 0, maxActive = 0;
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            int now = Interlocked.Increment(ref active);
            int seen;
            while ((seen = Volatile.Read(ref maxActive)) < now && Interlocked.CompareExchange(ref maxActive, now, seen) != seen)
            {
            }

            try
            {
                await Handlers.EchoAsync(connection);
            }
            finally
            {
                Interlocked.Decrement(ref active);
            }
        }, output: output);

        // Connect all of them (a hundred at a time, to stay inside the listen backlog), and keep them all open.
        var sockets = new Socket[Connections];
        using var throttle = new SemaphoreSlim(100);
        try
        {
            await Task.WhenAll(Enumerable.Range(0, Connections).Select(async i =>
            {
                await throttle.WaitAsync();
                try
                {
                    sockets[i] = await Client.ConnectAsync(server.EndPoint);
                }
                finally
                {
                    throttle.Release();
                }
            })).WithTimeout(Timeouts.Bulk);

            // Every connection sends its own payload and must get exactly that back.
            await Task.WhenAll(sockets.Select(async (socket, i) =>
            {
                byte[] payload = Encoding.ASCII.GetBytes($"connection {i:D4} says {new string((char)('a' + (i % 26)), i % 100)}");
                await socket.SendAllAsync(payload, Timeouts.Bulk);
                byte[] echoed = await socket.ReceiveExactlyAsync(payload.Length, Timeouts.Bulk);
                Assert.Equal(payload, echoed);
            })).WithTimeout(Timeouts.Bulk);

            Assert.True(Volatile.Read(ref maxActive) >= Connections, $"Only {maxActive} connections were open at once.");

            // And they all close cleanly: half-close, EOF back.
            await Task.WhenAll(sockets.Select(async socket =>
            {
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk));
            })).WithTimeout(Timeouts.Bulk);
        }
        finally
        {
            foreach (var socket in sockets)
            {
                socket?.Dispose();
            }
        }

        Assert.True(await Poll.UntilAsync(() => Volatile.Read(ref active) == 0), $"{active} handlers still running.");
        Assert.Equal(Connections, server.ConnectionCount);
    }
}

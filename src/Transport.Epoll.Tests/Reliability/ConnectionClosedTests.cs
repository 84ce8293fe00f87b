using System.Net.Sockets;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>
/// ConnectionClosed is how code outside the handler (a registry of live connections, a pub/sub hub) learns that a
/// connection is gone, so it must fire for every connection, also when the handler had already returned by then.
/// </summary>
public sealed class ConnectionClosedTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task ConnectionClosed_fires_for_every_connection_also_when_the_handler_has_returned(string transport)
    {
        const int Connections = 40;
        int fired = 0, returned = 0;
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            // Registered and left registered: the callback is someone else's cleanup.
            connection.ConnectionClosed.Register(() => Interlocked.Increment(ref fired));
            try
            {
                await Handlers.ReadToEndAsync(connection.Transport.Input);
            }
            catch (Exception)
            {
                // A reset ends the input with an exception: the handler just returns.
            }

            Interlocked.Increment(ref returned);
        }, output: output);

        for (int i = 0; i < Connections; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync("hello");
            if (i % 2 == 0)
            {
                socket.Reset();
            }
            else
            {
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync());
            }
        }

        Assert.True(await Poll.UntilAsync(() => Volatile.Read(ref returned) == Connections), $"Only {returned} of {Connections} handlers returned.");
        bool allFired = await Poll.UntilAsync(() => Volatile.Read(ref fired) == Connections);
        Assert.True(allFired, $"ConnectionClosed fired for {fired} of {Connections} closed connections ({transport}).");
    }
}

using System.Buffers;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Lifetimes;

/// <summary>The safety net of inline scheduling: a handler that blocks its loop is reported, not only felt.</summary>
public sealed class LoopStallTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_handler_that_blocks_its_loop_is_logged_once_per_endpoint_and_every_stall_is_counted()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            Epoll = o =>
            {
                o.UnsafePreferInlineScheduling = true;
                o.ThreadCount = 1;
                o.LoopStallThreshold = TimeSpan.FromMilliseconds(50);
            },
            ConnectionHandler = async connection =>
            {
                while (true)
                {
                    var read = await connection.Transport.Input.ReadAsync();
                    if (read.IsCompleted)
                    {
                        break;
                    }

                    string request = Encoding.ASCII.GetString(read.Buffer.ToArray());
                    connection.Transport.Input.AdvanceTo(read.Buffer.End);
                    if (request.StartsWith("block", StringComparison.Ordinal))
                    {
                        // On purpose: a synchronous wait on the loop's thread (inline scheduling), as a careless app would.
                        Thread.Sleep(300);
                    }

                    await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes("done"));
                }
            },
        });

        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            for (int i = 0; i < 2; i++)
            {
                using var client = await Client.ConnectAsync(server.EndPoint);
                await client.SendAllAsync("block");
                Assert.Equal("done", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(4)));
            }

            // The watchdog reports within half a threshold of the turn's end at most: wait for the count.
            Assert.True(await Poll.UntilAsync(async () => (await TransportMetrics.CollectAsync(server)).GetValueOrDefault("epoll.loop.stalls") >= 2));
        });

        Assert.True(metrics["epoll.loop.stalls"] >= 2, $"stalls counted: {metrics["epoll.loop.stalls"]}");
        string warning = Assert.Single(server.Logs.Entries, e => e.Category == "Transport.Epoll" && e.EventId.Id == 9).Message;
        Assert.Contains(server.EndPoint.ToString()!, warning, StringComparison.Ordinal);
        Assert.Contains("UnsafePreferInlineScheduling", warning, StringComparison.Ordinal);

        // A loop that does not block is never reported.
        using var quick = await Client.ConnectAsync(server.EndPoint);
        await quick.SendAllAsync("ping");
        Assert.Equal("done", Encoding.ASCII.GetString(await quick.ReceiveExactlyAsync(4)));
        Assert.Equal(metrics["epoll.loop.stalls"], (await TransportMetrics.CollectAsync(server))["epoll.loop.stalls"]);
    }
}

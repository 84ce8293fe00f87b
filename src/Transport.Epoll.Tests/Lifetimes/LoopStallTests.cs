using System.Buffers;
using System.Text;
using Transport.Epoll.Internal;
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
                // Well above what a first-time JIT of Kestrel's paths takes on a loaded machine (tens of ms), well below
                // the block below.
                o.LoopStallThreshold = TimeSpan.FromMilliseconds(200);
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
                        Thread.Sleep(700);
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

                // A first exchange, so the handler already waits on its input when "block" arrives: the loop's flush
                // then runs it inline (its very first read may complete on the thread pool that starts handlers).
                await client.SendAllAsync("ping");
                Assert.Equal("done", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(4)));
                await client.SendAllAsync("block");
                Assert.Equal("done", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(4)));
            }

            // The watchdog reports within half a threshold of the turn's end at most: wait for the count.
            Assert.True(await Poll.UntilAsync(async () => (await TransportMetrics.CollectAsync(server)).GetValueOrDefault("epoll.loop.stalls") >= 2));
        });

        Assert.True(metrics["epoll.loop.stalls"] >= 2, $"stalls counted: {metrics["epoll.loop.stalls"]}");
        string endPoint = server.EndPoint.ToString()!;
        string warning = Assert.Single(server.Logs.Entries, e => e.Category == EpollLog.Category && e.EventId.Id == EpollEvents.Id(nameof(EpollLog.LoopStalled)) && e.Message.Contains(endPoint, StringComparison.Ordinal)).Message;
        Assert.Contains(" ms in one turn serving ", warning, StringComparison.Ordinal);
        Assert.Contains("UnsafePreferInlineScheduling", warning, StringComparison.Ordinal);

        // The loop serves again once the handler returns (a stall is reported, not acted on).
        using var quick = await Client.ConnectAsync(server.EndPoint);
        await quick.SendAllAsync("ping");
        Assert.Equal("done", Encoding.ASCII.GetString(await quick.ReceiveExactlyAsync(4)));
    }
}

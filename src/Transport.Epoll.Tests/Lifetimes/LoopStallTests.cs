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
            // Two connections that each block the loop once. A block lands on the loop only when the handler already
            // waits on its input as "block" arrives (the loop's flush then runs it inline). A first exchange sees to
            // that, as the handler's very first read may complete on the thread pool that starts handlers; but on a
            // busy machine that thread can still be on its way back to ReadAsync when "block" arrives, and the handler
            // then sleeps on the thread pool: such a connection does not count, and another one is tried (at most 6).
            long stalls = 0;
            for (int attempt = 0; attempt < 6 && stalls < 2; attempt++)
            {
                using var client = await Client.ConnectAsync(server.EndPoint);
                await client.SendAllAsync("ping");
                Assert.Equal("done", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(4)));
                await client.SendAllAsync("block");
                Assert.Equal("done", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(4)));

                // The watchdog reports within half a threshold of the turn's end at most: wait a little for the count.
                long before = stalls;
                await Poll.UntilAsync(
                    async () => (stalls = (await TransportMetrics.CollectAsync(server)).GetValueOrDefault("epoll.loop.stalls")) > before,
                    timeout: TimeSpan.FromSeconds(1));
            }

            Assert.True(stalls >= 2, $"stalls counted after the attempts: {stalls}");
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

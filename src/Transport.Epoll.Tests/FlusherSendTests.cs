using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// Sends made on the thread that flushed (SendOnFlushingThread): the bytes are the same, in the same order, whichever
/// thread wrote them; the metric proves which path ran. The races with aborts and resets are in FloodTests.
/// </summary>
public sealed class FlusherSendTests(ITestOutputHelper output)
{
    private const int ResponseSize = 8 * 1024 * 1024;
    private const int FlushSize = 16 * 1024;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Output_flushed_in_small_pieces_from_the_thread_pool_arrives_intact(bool sendOnFlushingThread)
    {
        byte[] data = Client.RandomBytes(ResponseSize, seed: 51);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            // The default scheduling: this handler runs on the thread pool, so every flush is made off the loop.
            for (int offset = 0; offset < data.Length; offset += FlushSize)
            {
                if ((await connection.Transport.Output.WriteAsync(data.AsMemory(offset, FlushSize))).IsCompleted)
                {
                    return;
                }
            }

            await connection.Transport.Output.CompleteAsync();
        }, epoll: o => o.SendOnFlushingThread = sendOnFlushingThread, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] received = await socket.ReceiveToEndAsync(maxBytes: ResponseSize + 1, timeout: Timeouts.Bulk);

        Assert.Equal(ResponseSize, received.Length);
        Assert.True(data.AsSpan().SequenceEqual(received), "The bytes arrived changed or out of order.");
        await AssertFlusherWritesAsync(server, sendOnFlushingThread);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_large_HTTP_response_written_after_an_await_arrives_intact_and_the_connection_serves_the_next_request(bool inline)
    {
        byte[] data = Client.RandomBytes(ResponseSize, seed: 52);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Epoll = o => o.UnsafePreferInlineScheduling = inline,
            ConfigureApp = app =>
            {
                app.MapGet("/big", async (HttpContext context) =>
                {
                    // Off the loop even with inline scheduling: what a handler that awaits I/O looks like.
                    await Task.Yield();
                    context.Response.ContentLength = data.Length;
                    for (int offset = 0; offset < data.Length; offset += FlushSize)
                    {
                        await context.Response.Body.WriteAsync(data.AsMemory(offset, FlushSize));
                    }
                });
                app.MapGet("/small", () => "small");
            },
            Output = output,
        });

        using var client = HttpClients.Create(server.BaseAddress, maxConnectionsPerServer: 1);
        byte[] body = await client.GetByteArrayAsync("/big");
        string next = await client.GetStringAsync("/small");

        Assert.Equal(ResponseSize, body.Length);
        Assert.True(data.AsSpan().SequenceEqual(body), "The response body arrived changed or out of order.");
        Assert.Equal("small", next);
        await AssertFlusherWritesAsync(server, expected: true);
    }

    [Fact]
    public async Task Sends_that_meet_a_full_socket_are_finished_by_the_loop()
    {
        // A reader that takes nothing until the server has written far more than the socket buffers hold: the
        // flushing thread's sends end in EAGAIN, the loop takes over, and the bytes still arrive in order.
        const int Size = 16 * 1024 * 1024;
        byte[] data = Client.RandomBytes(Size, seed: 53);
        var wroteAll = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            for (int offset = 0; offset < Size; offset += FlushSize)
            {
                if ((await connection.Transport.Output.WriteAsync(data.AsMemory(offset, FlushSize))).IsCompleted)
                {
                    return;
                }
            }

            await connection.Transport.Output.CompleteAsync();
            wroteAll.TrySetResult();
        }, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 64 * 1024);
        Assert.True(await Poll.UntilAsync(async () => (await TransportMetrics.CollectAsync(server)).GetValueOrDefault("epoll.eagain") > 0, Timeouts.Default),
            "The server's sends never hit a full socket.");
        Assert.False(wroteAll.Task.IsCompleted, "The server wrote everything before the peer read anything: backpressure is gone.");

        byte[] received = await socket.ReceiveToEndAsync(maxBytes: Size + 1, timeout: Timeouts.Bulk);
        Assert.Equal(Size, received.Length);
        Assert.True(data.AsSpan().SequenceEqual(received), "The bytes arrived changed or out of order.");
        await wroteAll.Task.WithTimeout();
        var metrics = await TransportMetrics.CollectAsync(server);
        output.WriteLine($"writes {metrics.GetValueOrDefault("epoll.syscalls.write")}, on flushing threads {metrics.GetValueOrDefault("epoll.writes.flushing_thread")}, partial {metrics.GetValueOrDefault("epoll.writes.partial")}, EAGAIN {metrics.GetValueOrDefault("epoll.eagain")}");
        Assert.True(metrics.GetValueOrDefault("epoll.writes.flushing_thread") > 0, "No send was made on a flushing thread.");
        Assert.True(metrics.GetValueOrDefault("epoll.syscalls.write") > metrics.GetValueOrDefault("epoll.writes.flushing_thread"), "The loop made no send: nothing was handed over.");
    }

    [Fact]
    public async Task Small_flushes_from_the_thread_pool_are_left_to_the_loop_and_arrive_in_order()
    {
        // Responses of a few hundred bytes: the loop sends them at the end of its turn (batched with other
        // connections' and pipelined ones), so a flushing thread hands each one over instead of sending it.
        const int Messages = 2000;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            for (int i = 0; i < Messages; i++)
            {
                if ((await connection.Transport.Output.WriteAsync(Message(i))).IsCompleted)
                {
                    return;
                }
            }

            await connection.Transport.Output.CompleteAsync();
        }, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] received = await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk);

        byte[] expected = Enumerable.Range(0, Messages).SelectMany(Message).ToArray();
        Assert.True(expected.AsSpan().SequenceEqual(received), "The messages arrived changed or out of order.");
        await AssertFlusherWritesAsync(server, expected: false);

        static byte[] Message(int i) => System.Text.Encoding.ASCII.GetBytes($"message {i:D6} " + new string((char)('a' + (i % 26)), 200) + "\n");
    }

    [Fact]
    public async Task Pipelined_requests_served_on_the_thread_pool_get_every_response_in_order()
    {
        // The default scheduling with pipelining: Kestrel flushes each response from a pool thread while the next
        // requests of the batch wait in its input; every response must arrive, whole and in request order.
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = app => app.MapGet("/n/{i:int}", (int i) => $"response {i}"),
            Output = output,
        });

        const int Depth = 32;
        const int Batches = 20;
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var reader = new RawHttpReader(socket);
        for (int batch = 0; batch < Batches; batch++)
        {
            var requests = new System.Text.StringBuilder();
            for (int i = 0; i < Depth; i++)
            {
                requests.Append($"GET /n/{(batch * Depth) + i} HTTP/1.1\r\nHost: x\r\n\r\n");
            }

            await socket.SendAllAsync(System.Text.Encoding.ASCII.GetBytes(requests.ToString()));
            for (int i = 0; i < Depth; i++)
            {
                RawHttpResponse response = await reader.ReadResponseAsync().WithTimeout();
                Assert.Equal(200, response.StatusCode);
                Assert.Equal($"response {(batch * Depth) + i}", response.BodyText);
            }
        }
    }

    private async Task AssertFlusherWritesAsync(TestServer server, bool expected)
    {
        var metrics = await TransportMetrics.CollectAsync(server);
        long onFlusher = metrics.GetValueOrDefault("epoll.writes.flushing_thread");
        long all = metrics.GetValueOrDefault("epoll.syscalls.write");
        output.WriteLine($"sendmsg calls: {all}, on flushing threads: {onFlusher}, epoll_wait: {metrics.GetValueOrDefault("epoll.syscalls.epoll_wait")}");
        if (expected)
        {
            Assert.True(onFlusher > 0, $"None of {all} sends was made on the flushing thread.");
        }
        else
        {
            Assert.Equal(0, onFlusher);
        }
    }
}

using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class ResetAndAbortTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task A_peer_reset_completes_Input_with_ConnectionResetException_and_the_server_keeps_serving(string transport)
    {
        var gotData = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var readError = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var closeReason = new TaskCompletionSource<EpollCloseReason?>(TaskCreationOptions.RunContinuationsAsynchronously);
        int connections = 0;

        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            if (Interlocked.Increment(ref connections) > 1)
            {
                await Handlers.EchoAsync(connection);
                return;
            }

            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());
            long total = 0;
            try
            {
                while (true)
                {
                    var result = await connection.Transport.Input.ReadAsync();
                    total += result.Buffer.Length;
                    connection.Transport.Input.AdvanceTo(result.Buffer.End);
                    if (total >= 4000)
                    {
                        gotData.TrySetResult();
                    }

                    if (result.IsCompleted)
                    {
                        readError.TrySetResult(null);
                        break;
                    }
                }
            }
            catch (Exception ex)
            {
                readError.TrySetResult(ex);
            }

            await closed.Task.WithTimeout();
            closeReason.TrySetResult(connection.Features.Get<IEpollConnectionFeature>()?.CloseReason);
        }, output: output);

        var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync(new byte[4000]);
        await gotData.Task.WithTimeout();
        socket.Reset();

        var error = await readError.Task.WithTimeout();
        Assert.IsType<ConnectionResetException>(error);
        var reason = await closeReason.Task.WithTimeout();
        if (Transports.IsEpoll(transport))
        {
            Assert.Equal(EpollCloseReason.PeerReset, reason);
        }

        using var next = await Client.ConnectAsync(server.EndPoint);
        await next.SendAllAsync("still here");
        Assert.Equal("still here", Encoding.ASCII.GetString(await next.ReceiveExactlyAsync(10)));
    }

    [Theory, BothTransports]
    public async Task A_peer_reset_in_the_middle_of_a_POST_body_aborts_the_request_and_the_server_keeps_serving(string transport)
    {
        var bodyStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var bodyOutcome = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var requestAborted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var closeReason = new TaskCompletionSource<EpollCloseReason?>(TaskCreationOptions.RunContinuationsAsynchronously);

        await using var server = await TestServer.StartHttpAsync(transport, app =>
        {
            TestApp.Map(app);
            app.MapPost("/upload", async (HttpContext ctx) =>
            {
                var epoll = ctx.Features.Get<IEpollConnectionFeature>();
                ctx.RequestAborted.Register(() => requestAborted.TrySetResult());
                try
                {
                    while (true)
                    {
                        var result = await ctx.Request.BodyReader.ReadAsync();
                        ctx.Request.BodyReader.AdvanceTo(result.Buffer.End);
                        bodyStarted.TrySetResult();
                        if (result.IsCompleted)
                        {
                            bodyOutcome.TrySetResult(null);
                            return;
                        }
                    }
                }
                catch (Exception ex)
                {
                    bodyOutcome.TrySetResult(ex);
                }

                await requestAborted.Task.WithTimeout();
                if (epoll is not null)
                {
                    // RequestAborted follows ConnectionClosed, which fires after the close reason is set.
                    await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None);
                }

                closeReason.TrySetResult(epoll?.CloseReason);
            });
        }, output: output);

        var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000\r\n\r\n");
        await socket.SendAllAsync(new byte[64 * 1024]);
        await bodyStarted.Task.WithTimeout();
        socket.Reset();

        Assert.NotNull(await bodyOutcome.Task.WithTimeout());
        await requestAborted.Task.WithTimeout();
        if (Transports.IsEpoll(transport))
        {
            Assert.Equal(EpollCloseReason.PeerReset, await closeReason.Task.WithTimeout());
        }

        using var client = HttpClients.Create(server.BaseAddress);
        Assert.Equal(TestApp.Plaintext, await client.GetStringAsync("/plaintext"));
    }

    [Theory, BothTransports]
    public async Task Abort_from_the_server_is_seen_by_the_client_as_a_reset(string transport)
    {
        var closeReason = new TaskCompletionSource<EpollCloseReason?>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());
            var result = await connection.Transport.Input.ReadAsync();
            connection.Transport.Input.AdvanceTo(result.Buffer.End);

            // Output written but not yet flushed is dropped by the abort, not delivered (checked by the client).
            connection.Transport.Output.Write(new byte[100_000]);
            connection.Abort(new ConnectionAbortedException("The test aborts the connection."));
            await closed.Task.WithTimeout();
            closeReason.TrySetResult(connection.Features.Get<IEpollConnectionFeature>()?.CloseReason);
        }, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync("abort me");

        long received = 0;
        var ex = await Assert.ThrowsAsync<SocketException>(async () =>
        {
            // Whatever arrives before the reset is counted; EOF instead of the reset fails the test.
            var buffer = new byte[64 * 1024];
            int n;
            while ((n = await socket.ReceiveOnceAsync(buffer)) > 0)
            {
                received += n;
            }
        });
        Assert.Equal(SocketError.ConnectionReset, ex.SocketErrorCode);
        Assert.True(received == 0, $"{received} bytes of the output the abort dropped reached the client.");

        var reason = await closeReason.Task.WithTimeout();
        if (Transports.IsEpoll(transport))
        {
            Assert.Equal(EpollCloseReason.Aborted, reason);
        }
    }
}

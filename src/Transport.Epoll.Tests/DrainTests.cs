using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// Draining on stop (issue 14): Kestrel sets IConnectionLifetimeNotificationFeature on every transport connection
/// (its KestrelConnection adds itself to the connection's features) and, after unbinding, calls RequestClose on each:
/// HTTP/1.1 answers the request in flight with Connection: close, HTTP/2 sends GOAWAY, a raw handler sees
/// ConnectionClosedRequested. These tests prove that chain holds on our feature collection, with real clients.
/// </summary>
public sealed class DrainTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task A_keep_alive_HTTP1_client_gets_Connection_close_on_its_next_response_then_the_server_closes(string transport)
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartHttpAsync(transport, app =>
        {
            TestApp.Map(app);
            app.MapGet("/held", async (HttpContext context) =>
            {
                // Answers once Kestrel asked the connection to close: its stop unbinds first and asks each
                // connection a moment later, so "the listener refuses" alone does not order the two.
                CancellationToken closeRequested = context.Features.Get<IConnectionLifetimeNotificationFeature>()!.ConnectionClosedRequested;
                var asked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                using CancellationTokenRegistration registration = closeRequested.Register(() => asked.TrySetResult());
                started.TrySetResult();
                await asked.Task.WaitAsync(Timeouts.Bulk);
                return Results.Text("released");
            });
        }, output: output);

        using var socket = await Client.ConnectAsync(server.IPEndPoint);
        var reader = new RawHttpReader(socket);

        // Mid-session: one keep-alive exchange done, the next request in flight when the stop begins.
        await socket.SendAllAsync(RawHttpReader.Get("/plaintext"));
        RawHttpResponse first = await reader.ReadResponseAsync();
        Assert.Equal(200, first.StatusCode);
        Assert.False(first.Headers.ContainsKey("Connection"), "The first response already closes the connection.");

        await socket.SendAllAsync(RawHttpReader.Get("/held"));
        await started.Task.WithTimeout();
        Task stop = server.StopAsync();
        Assert.True(await Poll.UntilAsync(() => IsRefusedAsync(server.IPEndPoint)), "The server still accepts after the stop began.");

        RawHttpResponse next = await reader.ReadResponseAsync();
        Assert.Equal(200, next.StatusCode);
        Assert.Equal("released", next.BodyText);
        Assert.Equal("close", next.Headers["Connection"]);
        Assert.Empty(await socket.ReceiveToEndAsync());
        await stop.WithTimeout(Timeouts.Bulk);
    }

    [Theory, BothTransports]
    public async Task An_h2c_client_gets_GOAWAY_when_the_server_stops(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, listen => listen.Protocols = HttpProtocols.Http2, output);
        using var socket = await Client.ConnectAsync(server.IPEndPoint);

        // Prior knowledge: the preface and an empty SETTINGS frame; the server answers with its SETTINGS.
        await socket.SendAllAsync(Encoding.ASCII.GetBytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").Concat(Frame(type: 4, flags: 0, stream: 0, [])).ToArray());
        var frames = new FrameReader(socket);
        (byte type, byte flags, int _, byte[] _) = await frames.ReadAsync();
        Assert.Equal(4, type);
        Assert.Equal(0, flags & 1);
        await socket.SendAllAsync(Frame(type: 4, flags: 1, stream: 0, []));

        Task stop = server.StopAsync();
        byte[]? goAway = null;
        while (goAway is null)
        {
            (type, _, _, byte[] payload) = await frames.ReadAsync();
            output.WriteLine($"frame type {type}, {payload.Length} bytes");
            if (type == 7)
            {
                goAway = payload;
            }
        }

        // RFC 9113 6.8: last stream id (none opened: 0) and the error code NO_ERROR, a graceful shutdown.
        Assert.Equal(0, BinaryPrimitives.ReadInt32BigEndian(goAway) & 0x7FFFFFFF);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(goAway.AsSpan(4)));
        await stop.WithTimeout(Timeouts.Bulk);

        // Then the server closes: a FIN (not a reset, which throws) within the timeout, whatever frames came first.
        await socket.ReceiveToEndAsync();
    }

    [Theory, BothTransports]
    public async Task An_h2c_request_in_flight_completes_after_GOAWAY(string transport)
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartHttpAsync(transport, app =>
        {
            app.MapGet("/held", async () =>
            {
                started.TrySetResult();
                await release.Task.WaitAsync(Timeouts.Bulk);
                return Results.Text("released");
            });
        }, listen => listen.Protocols = HttpProtocols.Http2, output);

        using var client = HttpClients.Create(server.BaseAddress, HttpVersion.Version20);
        Task<HttpResponseMessage> inFlight = client.GetAsync("/held");
        await started.Task.WithTimeout();
        Task stop = server.StopAsync();
        Assert.True(await Poll.UntilAsync(() => IsRefusedAsync(server.IPEndPoint)), "The server still accepts after the stop began.");
        Assert.False(stop.IsCompleted, "StopAsync did not wait for the HTTP/2 request in flight.");

        release.SetResult();
        using HttpResponseMessage response = await inFlight.WithTimeout();
        Assert.Equal(HttpVersion.Version20, response.Version);
        Assert.Equal("released", await response.Content.ReadAsStringAsync());
        await stop.WithTimeout(Timeouts.Bulk);
    }

    [Theory, BothTransports]
    public async Task A_raw_handler_sees_ConnectionClosedRequested_and_says_goodbye_before_the_stop_aborts(string transport)
    {
        var notified = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            var lifetime = connection.Features.Get<IConnectionLifetimeNotificationFeature>();
            Assert.NotNull(lifetime);
            var closeRequested = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = lifetime.ConnectionClosedRequested.Register(() => closeRequested.TrySetResult());
            await connection.Transport.Output.WriteAsync("hello\n"u8.ToArray());
            await closeRequested.Task.WaitAsync(Timeouts.Bulk);
            notified.TrySetResult();
            await connection.Transport.Output.WriteAsync("bye\n"u8.ToArray());
            await connection.Transport.Output.CompleteAsync();
        }, output: output);

        using var socket = await Client.ConnectAsync(server.IPEndPoint);
        Assert.Equal("hello\n", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(6)));
        Task stop = server.StopAsync();
        await notified.Task.WithTimeout();
        Assert.Equal("bye\n", Encoding.ASCII.GetString(await socket.ReceiveToEndAsync()));
        await stop.WithTimeout(Timeouts.Bulk);
    }

    private static byte[] Frame(byte type, byte flags, int stream, byte[] payload)
    {
        var frame = new byte[9 + payload.Length];
        frame[0] = (byte)(payload.Length >> 16);
        frame[1] = (byte)(payload.Length >> 8);
        frame[2] = (byte)payload.Length;
        frame[3] = type;
        frame[4] = flags;
        BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(5), stream);
        payload.CopyTo(frame, 9);
        return frame;
    }

    internal static async Task<bool> IsRefusedAsync(IPEndPoint endPoint)
    {
        using var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            using var cts = Timeouts.Cts();
            await socket.ConnectAsync(endPoint, cts.Token);
            return false;
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset)
        {
            // Reset: the probe reached the listener's queue just as the stopping listener closed (the kernel resets
            // what is still queued then): not accepting either.
            return true;
        }
    }

    /// <summary>Reads HTTP/2 frames (RFC 9113 4.1) off a raw socket, each read bounded by the default timeout.</summary>
    private sealed class FrameReader(Socket socket)
    {
        public async Task<(byte Type, byte Flags, int Stream, byte[] Payload)> ReadAsync()
        {
            byte[] header = await socket.ReceiveExactlyAsync(9);
            int length = (header[0] << 16) | (header[1] << 8) | header[2];
            byte[] payload = length == 0 ? [] : await socket.ReceiveExactlyAsync(length);
            return (header[3], header[4], BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(5)) & 0x7FFFFFFF, payload);
        }
    }
}

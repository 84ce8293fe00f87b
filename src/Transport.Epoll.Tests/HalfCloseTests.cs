using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class HalfCloseTests(ITestOutputHelper output)
{
    /// <summary>
    /// The client shuts down its sending side after its data: the server's Input completes, the server still echoes
    /// everything back, then completes Output, and the client sees EOF. Epoll runs with AllowHalfOpen on and off.
    /// </summary>
    [Theory]
    [InlineData(Transports.Epoll, false)]
    [InlineData(Transports.Epoll, true)]
    [InlineData(Transports.Sockets, false)]
    public async Task A_client_that_half_closes_gets_all_its_bytes_back_then_EOF(string transport, bool allowHalfOpen)
    {
        await using var server = await TestServer.StartRawAsync(transport, Handlers.EchoAsync, o => o.AllowHalfOpen = allowHalfOpen, output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] data = Client.RandomBytes(3 * 1024 * 1024, seed: 5);

        var receive = socket.ReceiveToEndAsync(timeout: Timeouts.Bulk);
        await socket.SendAllAsync(data, Timeouts.Bulk);
        socket.Shutdown(SocketShutdown.Send);
        byte[] echoed = await receive;

        Assert.Equal(data.Length, echoed.Length);
        Assert.Equal(Client.Sha256(data), Client.Sha256(echoed));
    }

    /// <summary>
    /// What a peer's FIN does to ConnectionClosed: by default it fires (as with Sockets, so HTTP can abort requests of
    /// clients that went away); with AllowHalfOpen it fires only once the server completes Output and the socket closes.
    /// </summary>
    [Theory]
    [InlineData(Transports.Epoll, false)]
    [InlineData(Transports.Epoll, true)]
    [InlineData(Transports.Sockets, false)]
    public async Task A_peer_FIN_fires_ConnectionClosed_unless_AllowHalfOpen(string transport, bool allowHalfOpen)
    {
        var inputDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var clientGotReply = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var closedAfterReply = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        string state = "";
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());
            byte[] received = await Handlers.ReadToEndAsync(connection.Transport.Input);
            inputDone.TrySetResult();

            // Still writable after the peer's FIN.
            await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes($"got {received.Length}"));
            await clientGotReply.Task;
            var epoll = connection.Features.Get<IEpollConnectionFeature>();
            state = $"close reason {epoll?.CloseReason}";

            // ConnectionClosed is raised off the I/O thread, so "fired" is awaited; "not fired" gets a short window to
            // show up in.
            var window = allowHalfOpen ? TimeSpan.FromMilliseconds(200) : Timeouts.Default;
            closedAfterReply.TrySetResult(await Task.WhenAny(closed.Task, Task.Delay(window)) == closed.Task);
            await connection.Transport.Output.CompleteAsync();
            await closed.Task;
        }, o => o.AllowHalfOpen = allowHalfOpen, output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync("12345");
        socket.Shutdown(SocketShutdown.Send);
        await inputDone.Task.WithTimeout();

        Assert.Equal("got 5", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(5)));
        clientGotReply.SetResult();
        bool closedBeforeOutputCompleted = await closedAfterReply.Task.WithTimeout();

        Assert.True(closedBeforeOutputCompleted == !allowHalfOpen, $"ConnectionClosed {(closedBeforeOutputCompleted ? "had" : "had not")} fired before Output completed ({state}).");
        Assert.Empty(await socket.ReceiveToEndAsync());
        await closed.Task.WithTimeout();
    }

    /// <summary>
    /// The server completes Output (FIN to the client) but keeps reading: the client sees the data then EOF, and can
    /// still send. Epoll only: the Sockets transport closes the whole socket once Output completes (its send loop
    /// ends with shutdown(SHUT_RDWR) and Dispose), so there is no server-side half-close to test there.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task When_the_server_completes_output_the_client_sees_EOF_and_can_still_send(bool allowHalfOpen)
    {
        var received = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes("greeting"));
            await connection.Transport.Output.CompleteAsync();
            try
            {
                received.TrySetResult(await Handlers.ReadToEndAsync(connection.Transport.Input));
            }
            catch (Exception ex)
            {
                received.TrySetException(ex);
            }
        }, o => o.AllowHalfOpen = allowHalfOpen, output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        Assert.Equal("greeting", Encoding.ASCII.GetString(await socket.ReceiveToEndAsync()));

        byte[] late = Client.RandomBytes(200_000, seed: 7);
        await socket.SendAllAsync(late);
        socket.Shutdown(SocketShutdown.Send);

        Assert.Equal(Client.Sha256(late), Client.Sha256(await received.Task.WithTimeout()));
    }
}

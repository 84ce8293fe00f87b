using System.Buffers;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Outbound;

/// <summary>An outbound connection has what an accepted one has: half-close both ways, close reasons, sendfile, the idle timeout.</summary>
public sealed class OutboundConnectionTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    [Fact]
    public async Task We_half_close_first_and_still_read_everything_the_server_sends_back()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory();
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());

        // Our FIN goes out after 2 MiB; the server echoes all of it after seeing the FIN, then closes its side.
        byte[] data = Client.RandomBytes(2 * 1024 * 1024, seed: 11);
        byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, data);

        Assert.Equal(Client.Sha256(data), Client.Sha256(echoed));
        await closed.Task.WithTimeout();
        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
        Assert.True(await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None), "The connection never closed.");
        Assert.Contains(epoll.CloseReason, new[] { EpollCloseReason.PeerClosed, EpollCloseReason.LocalClose });
    }

    [Fact]
    public async Task The_server_half_closes_first_and_we_still_write_with_AllowHalfOpen()
    {
        var serverGot = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        // The server is the epoll transport: Sockets stops reading once its application completes Output.
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            // The server says its piece and shuts down its sending side, then reads until our FIN.
            await connection.Transport.Output.WriteAsync("from server"u8.ToArray());
            await connection.Transport.Output.CompleteAsync();
            byte[] received = await Handlers.ReadToEndAsync(connection.Transport.Input);
            serverGot.TrySetResult(Encoding.ASCII.GetString(received));
        }, o => o.AllowHalfOpen = true, output);
        await using var factory = OutboundClient.NewFactory(o => o.AllowHalfOpen = true);
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();

        byte[] fromServer = await Handlers.ReadToEndAsync(connection.Transport.Input).WithTimeout();
        Assert.Equal("from server", Encoding.ASCII.GetString(fromServer));

        // The peer's FIN did not close us: we can still write, and the server reads it all.
        Assert.False(connection.ConnectionClosed.IsCancellationRequested, "ConnectionClosed fired at the peer's FIN with AllowHalfOpen.");
        await connection.Transport.Output.WriteAsync("from client after the server's FIN"u8.ToArray()).AsTask().WithTimeout();
        await connection.Transport.Output.CompleteAsync();
        Assert.Equal("from client after the server's FIN", await serverGot.Task.WithTimeout());

        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
        Assert.True(await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None), "The connection never closed after both FINs.");
        Assert.Equal(EpollCloseReason.PeerClosed, epoll.CloseReason);
    }

    [Fact]
    public async Task A_peer_reset_is_close_reason_PeerReset()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, async connection =>
        {
            // Reset only once the client has spoken: a reset before the client saw its handshake complete would make
            // the connect itself fail (SO_ERROR is ECONNRESET then), which is not what this test is about.
            await connection.Transport.Input.ReadAsync();
            connection.Abort();
        }, output: output);
        await using var factory = OutboundClient.NewFactory();
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        await connection.Transport.Output.WriteAsync("reset me"u8.ToArray()).AsTask().WithTimeout();

        await Assert.ThrowsAsync<ConnectionResetException>(() => Handlers.ReadToEndAsync(connection.Transport.Input).WithTimeout());

        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
        Assert.True(await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None));
        Assert.Equal(EpollCloseReason.PeerReset, epoll.CloseReason);
    }

    [Fact]
    public async Task Aborting_an_outbound_connection_resets_the_server_side()
    {
        var serverSaw = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, async connection =>
        {
            try
            {
                await Handlers.ReadToEndAsync(connection.Transport.Input);
                serverSaw.TrySetResult(null);
            }
            catch (Exception e)
            {
                serverSaw.TrySetResult(e);
            }
        }, output: output);
        await using var factory = OutboundClient.NewFactory();
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        await connection.Transport.Output.WriteAsync("x"u8.ToArray()).AsTask().WithTimeout();

        connection.Abort(new ConnectionAbortedException("test"));

        Assert.IsType<ConnectionResetException>(await serverSaw.Task.WithTimeout());
        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
        Assert.True(await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None));
        Assert.Equal(EpollCloseReason.Aborted, epoll.CloseReason);
    }

    [Fact]
    public async Task An_idle_outbound_connection_closes_with_IdleTimeout()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory(o => o.IdleTimeout = TimeSpan.FromMilliseconds(200));
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());

        await closed.Task.WithTimeout();

        Assert.Equal(EpollCloseReason.IdleTimeout, connection.Features.Get<IEpollConnectionFeature>()!.CloseReason);
    }

    [Fact]
    public async Task SendFileAsync_on_an_outbound_connection_sends_the_file_with_sendfile()
    {
        const long size = 3_000_001;
        string path = files.Create(size);
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory();
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        var sendFile = connection.Features.Get<IConnectionSendFileFeature>()!;
        Assert.True(sendFile.IsSendFileAvailable);

        Task<byte[]> echoed = Handlers.ReadToEndAsync(connection.Transport.Input);
        connection.Transport.Output.Write("head"u8);
        using (SafeFileHandle file = File.OpenHandle(path))
        {
            await sendFile.SendFileAsync(file, 0, size).WithTimeout(Timeouts.Bulk);
        }

        await connection.Transport.Output.CompleteAsync();
        byte[] all = await echoed.WithTimeout(Timeouts.Bulk);

        Assert.Equal(size + 4, all.Length);
        Assert.Equal("head", Encoding.ASCII.GetString(all, 0, 4));
        Assert.Equal(TestFiles.Hash(path, 0, size), Client.Sha256(all.AsSpan(4)));
    }

    [Fact]
    public async Task WithSocketAsync_runs_on_the_connections_loop_with_its_fd()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory(o => o.ThreadCount = 3);
        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;

        string thread = await epoll.WithSocketAsync(fd =>
        {
            Assert.True(fd >= 0);
            return Thread.CurrentThread.Name ?? "";
        }).WithTimeout();

        Assert.Equal($"epoll-{epoll.LoopIndex}", thread);
    }
}

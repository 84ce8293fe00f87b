using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>Every fallback trigger of the raw feature, cancellation on both sides of the first byte, and a file that
/// shrinks under the call.</summary>
public sealed class SendFileFallbackTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    private static async Task<byte[]> AskAsync(Socket socket, string path, long offset, long count)
    {
        await socket.SendAllAsync($"{path} {offset} {count}\n");
        byte[] all = await socket.ReceiveExactlyAsync(FileProtocol.Begin.Length + checked((int)count) + FileProtocol.End.Length, Timeouts.Bulk);
        Assert.Equal("BEGIN\n", Encoding.ASCII.GetString(all, 0, FileProtocol.Begin.Length));
        Assert.Equal("END\n", Encoding.ASCII.GetString(all, all.Length - FileProtocol.End.Length, FileProtocol.End.Length));
        return all[FileProtocol.Begin.Length..^FileProtocol.End.Length];
    }

    private async Task<Dictionary<string, long>> ServeAndCheckAsync(string path, long count, byte[] expected, Action<EpollTransportOptions>? epoll = null, Action<ListenOptions>? listen = null)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConnectionHandler = c => FileProtocol.ServeAsync(c),
            Epoll = epoll,
            ConfigureListen = listen,
            Output = output,
        });
        using var socket = await Client.ConnectAsync(server.EndPoint);
        return await TransportMetrics.CollectAsync(server, async () =>
        {
            // Twice on one connection: the order holds across a fallback too.
            for (int i = 0; i < 2; i++)
            {
                Assert.Equal(Client.Sha256(expected), Client.Sha256(await AskAsync(socket, path, 0, count)));
            }
        });
    }

    [Fact]
    public async Task With_the_option_off_the_file_is_copied_through_the_pipe()
    {
        string path = files.Create(1_000_003);
        var metrics = await ServeAndCheckAsync(path, 1_000_003, await File.ReadAllBytesAsync(path), epoll: o => o.EnableSendFile = false);
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(2 * 1_000_003, metrics["epoll.sendfile.fallback_bytes"]);
    }

    [Fact]
    public async Task A_handle_that_is_not_a_regular_file_is_copied()
    {
        // A character device: sendfile would take it, but only a regular file is known to be safe to map.
        var metrics = await ServeAndCheckAsync("/dev/zero", 300_000, new byte[300_000]);
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(2 * 300_000, metrics["epoll.sendfile.fallback_bytes"]);
    }

    [Fact]
    public async Task A_file_sendfile_refuses_with_EINVAL_is_copied()
    {
        // A regular file (S_IFREG) whose file system has no splice support: sendfile(2) fails with EINVAL.
        const string path = "/proc/self/limits";
        byte[] expected = await File.ReadAllBytesAsync(path);
        var metrics = await ServeAndCheckAsync(path, expected.Length, expected);
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(2 * expected.Length, metrics["epoll.sendfile.fallback_bytes"]);
    }

    [Fact]
    public async Task A_replaced_transport_pipe_gets_the_file_through_the_new_pipe()
    {
        string path = files.Create(777_777);
        var metrics = await ServeAndCheckAsync(path, 777_777, await File.ReadAllBytesAsync(path), listen: l => l.UseConnectionLogging());
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(2 * 777_777, metrics["epoll.sendfile.fallback_bytes"]);
    }

    [Fact]
    public async Task Cancelled_before_the_first_byte_the_connection_goes_on_without_the_file()
    {
        string path = files.Create(2_000_000);
        var outcome = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        byte[] ahead = Client.RandomBytes(8 * 1024 * 1024, seed: 3);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Epoll = o => o.MaxWriteBufferSize = 0,
            Output = output,
            ConnectionHandler = async connection =>
            {
                var feature = connection.Features.Get<IConnectionSendFileFeature>()!;
                using var file = File.OpenHandle(path);

                // Already cancelled: nothing happens at all.
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => feature.SendFileAsync(file, 0, 10, new CancellationToken(true)));

                // 8 MiB the client does not read yet: the job waits behind them, then is cancelled there.
                await connection.Transport.Output.WriteAsync(ahead);
                using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
                try
                {
                    await feature.SendFileAsync(file, 0, 2_000_000, cts.Token);
                    outcome.TrySetResult(null);
                }
                catch (Exception ex)
                {
                    outcome.TrySetResult(ex);
                }

                await connection.Transport.Output.WriteAsync("after"u8.ToArray());
                await connection.Transport.Output.CompleteAsync();
            },
        });
        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 64 * 1024);
        Assert.IsAssignableFrom<OperationCanceledException>(await outcome.Task.WithTimeout());
        byte[] all = await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk);
        Assert.Equal(ahead.Length + 5, all.Length);
        Assert.Equal(Client.Sha256(ahead), Client.Sha256(all.AsSpan(0, ahead.Length)));
        Assert.Equal("after", Encoding.ASCII.GetString(all, ahead.Length, 5));
    }

    [Fact]
    public async Task Cancelled_after_the_first_byte_the_connection_is_aborted()
    {
        string path = files.Create(64 * 1024 * 1024);
        var outcome = new TaskCompletionSource<(Exception? Error, EpollCloseReason Reason)>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            using var file = File.OpenHandle(path);
            using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
            Exception? error = null;
            try
            {
                // The client never reads: part of the file fills the socket buffers, the rest waits.
                await connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, 0, 64 * 1024 * 1024, cts.Token);
            }
            catch (Exception ex)
            {
                error = ex;
            }

            var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
            await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None);
            outcome.TrySetResult((error, epoll.CloseReason));
        }, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var (error, reason) = await outcome.Task.WithTimeout();
        Assert.IsAssignableFrom<OperationCanceledException>(error);
        Assert.Equal(EpollCloseReason.Aborted, reason);
        await Assert.ThrowsAsync<SocketException>(async () => await socket.ReceiveToEndAsync(maxBytes: 128 * 1024 * 1024, timeout: Timeouts.Bulk));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_file_shorter_than_the_range_aborts_instead_of_sending_short(bool sendFile)
    {
        string path = files.Create(1_500_000);
        var outcome = new TaskCompletionSource<(Exception? Error, EpollCloseReason Reason)>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            // Starts when the client says so: a reset that came before the client's connect completed would fail
            // the connect instead of the reads this test checks.
            await connection.Transport.Input.ReadAsync();
            using var file = File.OpenHandle(path);
            Exception? error = null;
            try
            {
                await connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, 0, 2_000_000);
            }
            catch (Exception ex)
            {
                error = ex;
            }

            var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
            await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None);
            outcome.TrySetResult((error, epoll.CloseReason));
        }, epoll: o =>
        {
            o.EnableSendFile = sendFile;

            // The client reads only once the outcome is known: the kernel must take the whole file meanwhile, which
            // the not-sent watermark would stop at 128 KiB.
            o.TcpNotSentLowWatermark = null;
        }, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync("go");
        var (error, reason) = await outcome.Task.WithTimeout();
        Assert.IsType<IOException>(error);

        // Reset (SO_LINGER 0), not a graceful end after a short body.
        Assert.Contains(reason, new[] { EpollCloseReason.Aborted, EpollCloseReason.Error });
        long received = 0;
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await socket.ReceiveOnceAsync(buffer, Timeouts.Bulk)) > 0)
            {
                received += n;
            }
        }
        catch (SocketException ex)
        {
            // The reset (ECONNRESET) ends the reads; what matters is the server-side reason above.
            output.WriteLine($"client read {received} bytes, then {ex.SocketErrorCode}");
        }

        Assert.True(received <= 1_500_000);
    }

    [Fact]
    public async Task Completing_the_output_while_a_file_is_in_flight_aborts_without_stalling_the_loop()
    {
        string path = files.Create(48 * 1024 * 1024);
        var outcome = new TaskCompletionSource<(Exception? Error, EpollCloseReason Reason)>(TaskCreationOptions.RunContinuationsAsynchronously);
        var fileArriving = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Epoll = o => o.ThreadCount = 1,
            Output = output,
            ConnectionHandler = async connection =>
            {
                // The first byte says what the connection is for: 'E' an echo, anything else the misused file send.
                var first = await connection.Transport.Input.ReadAsync();
                bool isEcho = first.Buffer.FirstSpan[0] == (byte)'E';
                connection.Transport.Input.AdvanceTo(first.Buffer.GetPosition(1));
                if (isEcho)
                {
                    await Handlers.EchoAsync(connection);
                    return;
                }

                using var file = File.OpenHandle(path);

                // A misuse: the send is not awaited, more is written and the output completed behind it.
                Task send = connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, 0, 48 * 1024 * 1024);

                // Once the client sees file bytes, the job is under way on the loop.
                await fileArriving.Task.WaitAsync(Timeouts.Default);
                await connection.Transport.Output.WriteAsync("late"u8.ToArray());
                await connection.Transport.Output.CompleteAsync();
                Exception? error = null;
                try
                {
                    await send.WaitAsync(Timeouts.Default);
                }
                catch (Exception ex)
                {
                    error = ex;
                }

                var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
                await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None);
                outcome.TrySetResult((error, epoll.CloseReason));
            },
        });

        using var echo = await Client.ConnectAsync(server.EndPoint);
        await echo.SendAllAsync("E");
        using var misuse = await Client.ConnectAsync(server.EndPoint);
        await misuse.SendAllAsync("F");
        Assert.True(await misuse.ReceiveOnceAsync(new byte[1]) > 0);
        fileArriving.TrySetResult();
        var (error, reason) = await outcome.Task.WithTimeout();
        Assert.IsAssignableFrom<Microsoft.AspNetCore.Connections.ConnectionAbortedException>(error);
        Assert.Equal(EpollCloseReason.Aborted, reason);

        // The loop is alive: the other connection (the echo) still answers.
        await echo.SendAllAsync("ping");
        Assert.Equal("ping", Encoding.ASCII.GetString(await echo.ReceiveExactlyAsync(4)));
    }
}

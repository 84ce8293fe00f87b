using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Lifetimes;

/// <summary>
/// A bug on a connection's path (an exception where none is expected) closes that connection with reason Error and
/// one log line: its peer sees the end, its handler's ConnectionClosed fires, DisposeAsync returns, and the loop goes
/// on serving the others. The bug is stood for by an exception the send path throws on request (a test-only seam).
/// </summary>
public sealed class ConnectionBugTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(16, "loop")]
    [InlineData(256 * 1024, "flushing thread")]
    public async Task A_bug_in_the_send_path_closes_that_connection_and_the_loop_serves_the_next(int responseBytes, string where)
    {
        output.WriteLine($"{responseBytes} bytes flushed from the thread pool: the send runs on the {where}.");
        var outcome = new TaskCompletionSource<(EpollCloseReason Reason, Exception? FlushError)>(TaskCreationOptions.RunContinuationsAsynchronously);
        int connections = 0;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            if (Interlocked.Increment(ref connections) > 1)
            {
                await Handlers.EchoAsync(connection);
                return;
            }

            var epoll = (EpollConnection)connection.Features.Get<IEpollConnectionFeature>()!;
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());
            var request = await connection.Transport.Input.ReadAsync();
            connection.Transport.Input.AdvanceTo(request.Buffer.End);

            epoll.SendFaultForTest = new InvalidOperationException("a bug in the send path");
            Exception? flushError = null;
            try
            {
                await connection.Transport.Output.WriteAsync(new byte[responseBytes]);
            }
            catch (Exception ex)
            {
                flushError = ex;
            }

            await closed.Task;
            outcome.TrySetResult((epoll.CloseReason, flushError));
        }, output: output);
        server.Logs.Expect(IsTheInjectedBug, "the test's send-path bug, logged once as the transport's error");

        using (var client = await Client.ConnectAsync(server.EndPoint))
        {
            await client.SendAllAsync("go");

            // The peer sees the end of the connection: a reset (the transport aborts), never a hang.
            await ReadUntilClosedAsync(client);
            var (reason, flushError) = await outcome.Task.WithTimeout();
            Assert.Equal(EpollCloseReason.Error, reason);
            Assert.True(flushError is null or ConnectionAbortedException or ConnectionResetException or OperationCanceledException, $"The application's flush saw the transport's bug: {flushError}");
        }

        // Logged once, with the exception.
        Assert.Single(server.Logs.Entries, IsTheInjectedBug);

        // The same loop (one loop by default on this machine, or another) serves the next connection.
        using var next = await Client.ConnectAsync(server.EndPoint);
        await next.SendAllAsync("hello");
        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(await next.ReceiveExactlyAsync(5)));
    }

    private static bool IsTheInjectedBug(LogEntry entry) =>
        entry.Category.StartsWith(EpollLog.Category, StringComparison.Ordinal) && entry.ToString().Contains("a bug in the send path", StringComparison.Ordinal);

    private static async Task ReadUntilClosedAsync(Socket client)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (await client.ReceiveOnceAsync(buffer) > 0)
            {
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }
}

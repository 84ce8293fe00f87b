using System.Net.Sockets;
using System.Text;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>Process-wide counts: in the serial collection, so no other test opens fds or starts loops meanwhile.</summary>
[Collection(SerialCollection.Name)]
public sealed class LeakTests(ITestOutputHelper output)
{
    private const int Tolerance = 8;

    [Theory, BothTransports]
    public async Task Thousands_of_HTTP_connections_leave_no_fd_behind(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        await RunCyclesAsync(server, 100);
        int baseline = await SettledFdCountAsync();
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        await RunCyclesAsync(server, 3000);

        int after = 0;
        bool settled = await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + Tolerance);
        output.WriteLine($"fds: baseline {baseline}, after 3000 connections {after}.");
        Assert.True(settled, $"{after - baseline} fds more than before 3000 connections (baseline {baseline}): {ProcessInfo.DescribeNewFds(before)}");

        // The epoll transport's connection table gives every slot back (the Sockets host never touches it).
        int slots = 0;
        Assert.True(
            await Poll.UntilAsync(() => (slots = ConnectionTable.Shared.Count) == tableBaseline),
            $"{slots - tableBaseline} connection-table slots still taken after 3000 closed connections.");
    }

    [Theory, BothTransports]
    public async Task Connections_the_peer_resets_leave_no_fd_behind(string transport)
    {
        await using var server = await TestServer.StartRawAsync(transport, Handlers.EchoUntilResetAsync, output: output);
        int baseline = await SettledFdCountAsync();
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        for (int i = 0; i < 500; i++)
        {
            var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync("ping");
            await socket.ReceiveExactlyAsync(4);
            socket.Reset();
        }

        int after = 0;
        bool settled = await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + Tolerance);
        Assert.True(settled, $"{after - baseline} fds more than before 500 reset connections (baseline {baseline}): {ProcessInfo.DescribeNewFds(before)}");
        Assert.True(await Poll.UntilAsync(() => ConnectionTable.Shared.Count == tableBaseline), "Connection-table slots leaked by reset connections.");
    }

    [Fact]
    public async Task Disposing_the_host_stops_every_epoll_thread_and_closes_every_fd()
    {
        Assert.True(await Poll.UntilAsync(() => ProcessInfo.EpollThreadNames().Count == 0), "epoll- threads alive before the test: " + string.Join(", ", ProcessInfo.EpollThreadNames()));

        // A first host pays the process's one-time costs (thread pool, sockets engine, certificates...).
        await using (var warmUp = await TestServer.StartHttpAsync(Transports.Epoll, TestApp.Map, output: output))
        {
            await RunCyclesAsync(warmUp, 20);
        }

        Assert.True(await Poll.UntilAsync(() => ProcessInfo.EpollThreadNames().Count == 0), "epoll- threads alive after the warm-up host was disposed.");
        int baseline = await SettledFdCountAsync();
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        var server = await TestServer.StartAsync(new TestServerOptions { Transport = Transports.Epoll, ConfigureApp = TestApp.Map, Epoll = o => o.ThreadCount = 3, Output = output });
        bool disposed = false;
        try
        {
            Assert.Equal(["epoll-0", "epoll-1", "epoll-2"], ProcessInfo.EpollThreadNames());
            Assert.True(ProcessInfo.OpenFdCount() > baseline, "The host opened no fd (no epoll instance, no listener?).");
            await RunCyclesAsync(server, 200);

            // One connection is still open when the host goes away.
            using var open = await Client.ConnectAsync(server.EndPoint);
            disposed = true;
            await server.DisposeAsync();
        }
        finally
        {
            if (!disposed)
            {
                await server.DisposeAsync();
            }
        }

        Assert.True(await Poll.UntilAsync(() => ProcessInfo.EpollThreadNames().Count == 0), "epoll- threads alive after the host was disposed: " + string.Join(", ", ProcessInfo.EpollThreadNames()));
        int after = 0;
        bool settled = await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + Tolerance);
        Assert.True(settled, $"{after - baseline} fds more after the host was disposed than before it started (baseline {baseline}): {ProcessInfo.DescribeNewFds(before)}");
        Assert.Equal(tableBaseline, ConnectionTable.Shared.Count);
    }

    /// <summary>connect, one request with Connection: close, read to EOF, close; a few at a time.</summary>
    internal static async Task RunCyclesAsync(TestServer server, int count, int parallel = 8)
    {
        int next = -1;
        byte[] request = Encoding.ASCII.GetBytes(RawHttpReader.Get("/plaintext", close: true));
        var workers = Enumerable.Range(0, parallel).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) < count)
            {
                using var socket = await Client.ConnectAsync(server.EndPoint);
                await socket.SendAllAsync(request);
                string response = Encoding.ASCII.GetString(await socket.ReceiveToEndAsync());
                Assert.StartsWith("HTTP/1.1 200 OK", response);
                Assert.EndsWith(TestApp.Plaintext, response);
            }
        });
        await Task.WhenAll(workers).WithTimeout(Timeouts.Bulk * 2);
    }

    /// <summary>The fd count once it has stopped moving (closes of earlier sockets may still be under way).</summary>
    private static async Task<int> SettledFdCountAsync() =>
        (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenFdCount(), TimeSpan.FromMilliseconds(300));
}

using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Outbound;

/// <summary>Thousands of outbound connections, and what is left after the factory is disposed: in the serial
/// collection, so the process-wide counts (fds, table, epoll- threads) are this test's alone.</summary>
[Collection(SerialCollection.Name)]
public sealed class OutboundLoadTests(ITestOutputHelper output)
{
    private const int Tolerance = 8;

    /// <summary>
    /// 5,000 connections to the sample's echo port (a separate process on the epoll transport), 256 at a time: each
    /// sends its own bytes, half-closes, and must get exactly those bytes back (SHA-256), then end-of-stream. Every
    /// connection had its own id, never seen before.
    /// </summary>
    [Fact]
    public async Task Five_thousand_outbound_connections_to_the_sample_echo_port_get_their_own_bytes_back_with_unique_ids()
    {
        const int Connections = 5000;
        const int Parallel = 256;
        await using var sample = await SampleProcess.StartAsync(output: output);
        await using var factory = OutboundClient.NewFactory();
        var ids = new ulong[Connections];
        var loops = new int[Connections];
        int next = -1;

        var workers = Enumerable.Range(0, Parallel).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < Connections)
            {
                byte[] data = Client.RandomBytes(1 + (i * 7919 % 16384), seed: i);
                await using ConnectionContext connection = await factory.ConnectAsync(sample.EchoEndPoint).WithTimeout();
                var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
                ids[i] = epoll.Id;
                loops[i] = epoll.LoopIndex;
                byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, data);
                if (Client.Sha256(echoed) != Client.Sha256(data))
                {
                    throw new InvalidDataException($"Connection {i} ({epoll.Id:X16}): {echoed.Length} bytes came back for {data.Length} sent, or different ones.");
                }
            }
        })).ToList();
        await Task.WhenAll(workers).WithTimeout(TimeSpan.FromMinutes(2));

        Assert.Equal(Connections, ids.Distinct().Count());
        Assert.DoesNotContain(0UL, ids);
        Assert.Equal([0, 1], loops.Distinct().Order());
        sample.AssertNoUnexpectedFailures();
    }

    /// <summary>
    /// Connects that succeed, are refused, time out and are canceled, connections left open when the factory goes:
    /// afterwards no fd, no table slot and no epoll- thread is left.
    /// </summary>
    [Fact]
    public async Task A_disposed_factory_leaves_no_fd_table_slot_or_thread_behind()
    {
        Assert.True(await Poll.UntilAsync(() => ProcessInfo.EpollThreadNames().Count == 0), "epoll- threads alive before the test: " + string.Join(", ", ProcessInfo.EpollThreadNames()));
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoUntilResetAsync, output: output);
        using var backlog = await FullBacklogListener.StartAsync();
        using var closedPort = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closedPort.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        // The first factory pays the one-time costs (the runtime's sockets, thread pool, timers).
        await using (var warmUp = OutboundClient.NewFactory())
        {
            await using ConnectionContext c = await warmUp.ConnectAsync(server.EndPoint).WithTimeout();
            await OutboundClient.SendThenReadToEndAsync(c, "warm"u8.ToArray());
        }

        int baseline = (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenFdCount(), TimeSpan.FromMilliseconds(300));
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        var factory = OutboundClient.NewFactory(o => { o.ThreadCount = 3; o.ConnectTimeout = TimeSpan.FromMilliseconds(200); });
        var open = new List<ConnectionContext>();
        for (int i = 0; i < 100; i++)
        {
            ConnectionContext c = await factory.ConnectAsync(server.EndPoint).WithTimeout();
            if (i % 2 == 0)
            {
                await OutboundClient.SendThenReadToEndAsync(c, "ping"u8.ToArray());
                await c.DisposeAsync();
            }
            else
            {
                open.Add(c);
            }

            await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(closedPort.LocalEndPoint!).AsTask().WithTimeout());
        }

        for (int i = 0; i < 5; i++)
        {
            await Assert.ThrowsAsync<TimeoutException>(async () => await await OutboundClient.FinishedAsync(factory.ConnectAsync(backlog.EndPoint).AsTask()));
            using var cts = new CancellationTokenSource();
            Task<ConnectionContext> canceled = factory.ConnectAsync(backlog.EndPoint, cts.Token).AsTask();
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => canceled.WithTimeout());
        }

        // One connect is still waiting for its handshake when the factory goes: it fails, it does not hang.
        Task<ConnectionContext> pending = factory.ConnectAsync(backlog.EndPoint).AsTask();
        Assert.Equal(["epoll-0", "epoll-1", "epoll-2"], ProcessInfo.EpollThreadNames());
        await factory.DisposeAsync().AsTask().WithTimeout();
        await Assert.ThrowsAsync<ConnectionAbortedException>(() => pending.WithTimeout());

        // The connections left open were aborted by their loops' stop.
        foreach (ConnectionContext c in open)
        {
            Assert.Equal(EpollCloseReason.TransportShutdown, c.Features.Get<IEpollConnectionFeature>()!.CloseReason);
            await c.DisposeAsync().AsTask().WithTimeout();
        }

        Assert.True(await Poll.UntilAsync(() => ProcessInfo.EpollThreadNames().Count == 0), "epoll- threads alive after the factory was disposed: " + string.Join(", ", ProcessInfo.EpollThreadNames()));
        int after = 0;
        bool settled = await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + Tolerance);
        Assert.True(settled, $"{after - baseline} fds more after the factory was disposed (baseline {baseline}): {ProcessInfo.DescribeNewFds(before)}");
        Assert.Equal(tableBaseline, ConnectionTable.Shared.Count);
    }
}

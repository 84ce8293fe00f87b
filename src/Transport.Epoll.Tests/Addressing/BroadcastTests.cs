using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>Broadcast by id (IEpollConnections.Broadcast): every addressed connection gets the message, copied once per
/// event loop and shared by that loop's connections, not once per connection.</summary>
[Collection(SerialCollection.Name)]
public sealed class BroadcastTests(ITestOutputHelper output)
{
    private const int Wanted = 10_000;

    [Fact]
    public async Task A_broadcast_to_thousands_of_connections_reaches_every_one_with_one_copy_per_loop()
    {
        // Each connection takes two fds in this process (client and server): the soft limit is raised to the hard one
        // when that helps, and fewer connections are used when even the hard limit is short.
        ulong fdLimit = Native.EnsureFdLimit((2 * Wanted) + 1024);
        int count = (int)Math.Min(Wanted, (long)(fdLimit - 1024) / 2);
        output.WriteLine($"RLIMIT_NOFILE {fdLimit}: {count} connections");

        await using var server = await AddressableServer.StartAsync(output, o => o.ThreadCount = 2);
        IEpollConnections connections = server.Connections;
        var (clients, accepted) = await server.ConnectAsync(count);
        try
        {
            foreach (var client in clients)
            {
                client.ReceiveTimeout = (int)Timeouts.Bulk.TotalMilliseconds;
            }

            ulong[] ids = accepted.Select(a => a.Id).ToArray();
            byte[] first = Message(-1);
            Assert.Equal(count, connections.Broadcast(server.Server.EndPoint, first));
            ReadAll(clients, [first]);
            byte[] second = Message(-2);
            Assert.Equal(count, connections.Broadcast(ids, second));
            ReadAll(clients, [second]);

            // Measured: 20 broadcasts to every connection, then every connection reads them (synchronous receives
            // into one buffer, which allocate nothing), so the loops' sends are inside the window too.
            const int Rounds = 20;
            byte[][] messages = Enumerable.Range(0, Rounds).Select(Message).ToArray();
            var loops = server.Server.App.Services.GetRequiredService<Transport.Epoll.Internal.EpollTransportFactory>().Group!.Loops;
            long loopsBefore = await LoopAllocatedBytesAsync(loops);
            long processBefore = GC.GetTotalAllocatedBytes(precise: true);
            long threadBefore = GC.GetAllocatedBytesForCurrentThread();
            foreach (byte[] message in messages)
            {
                Assert.Equal(count, connections.Broadcast(ids, message));
            }

            long threadAfter = GC.GetAllocatedBytesForCurrentThread();
            ReadAll(clients, messages);
            long processAfter = GC.GetTotalAllocatedBytes(precise: true);
            long loopsAfter = await LoopAllocatedBytesAsync(loops);

            double callerPerBroadcast = (threadAfter - threadBefore) / (double)Rounds;
            double loopsPerBroadcast = (loopsAfter - loopsBefore) / (double)Rounds;
            double processPerBroadcast = (processAfter - processBefore) / (double)Rounds;
            long copyPerConnection = (long)count * messages[0].Length;
            output.WriteLine($"per broadcast of {messages[0].Length} bytes to {count} connections on {loops.Length} loops: {callerPerBroadcast:F0} bytes allocated by the caller, "
                + $"{loopsPerBroadcast:F0} by the loops, {processPerBroadcast:F0} by the whole process (the test's receives and everything else running included); "
                + $"a copy per connection would be {copyPerConnection} bytes");

            // The copies (one per loop, 64 bytes) come from a pool: once it is warm, neither side allocates per connection.
            Assert.True(callerPerBroadcast < 1024, $"the caller allocated {callerPerBroadcast:F0} bytes per broadcast");
            Assert.True(loopsPerBroadcast < 1024, $"the loops allocated {loopsPerBroadcast:F0} bytes per broadcast");
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    [Fact]
    public async Task A_broadcast_skips_stale_ids_and_the_excepted_connection()
    {
        await using var server = await AddressableServer.StartAsync(output);
        IEpollConnections connections = server.Connections;
        var (clients, accepted) = await server.ConnectAsync(3);
        using var a = clients[0];
        using var b = clients[1];
        using var gone = clients[2];
        gone.Shutdown(SocketShutdown.Send);
        await accepted[2].HandlerDone.WithTimeout();
        Assert.True(await Poll.UntilAsync(() => !connections.TryGetInfo(accepted[2].Id, out _)));

        Assert.Equal(2, connections.Broadcast([accepted[0].Id, accepted[1].Id, accepted[2].Id, 12345UL], "all\n"u8));
        Assert.Equal(1, connections.Broadcast(server.Server.EndPoint, "not-a\n"u8, exceptId: accepted[0].Id));
        // Ids are ordered by table slot, not by accept order (a freed slot is reused): compare as sets.
        Assert.Equal(new[] { accepted[0].Id, accepted[1].Id }.Order(), connections.GetIds(server.Server.EndPoint).Order());
        Assert.Equal(EpollWriteResult.Written, connections.Write(accepted[0].Id, "end\n"u8));
        Assert.Equal(EpollWriteResult.Written, connections.Write(accepted[1].Id, "end\n"u8));

        Assert.Equal("all\nend\n", Encoding.ASCII.GetString(await a.ReceiveExactlyAsync(8)));
        Assert.Equal("all\nnot-a\nend\n", Encoding.ASCII.GetString(await b.ReceiveExactlyAsync(14)));
        Assert.Equal(0, await gone.ReceiveOnceAsync(new byte[16]));
    }

    [Fact]
    public async Task A_first_message_given_at_opt_in_goes_before_anything_written_by_id()
    {
        const int Count = 200;
        await using var server = await AddressableServer.StartAsync(output, greeting: "hello\n"u8.ToArray());
        IEpollConnections connections = server.Connections;

        // Broadcasts run the whole time connections opt in: none may reach a connection before its greeting.
        using var stop = new CancellationTokenSource();
        var broadcaster = Task.Run(() =>
        {
            long sent = 0;
            while (!stop.IsCancellationRequested)
            {
                connections.Broadcast(server.Server.EndPoint, "b\n"u8);
                sent++;
            }

            return sent;
        });
        var (clients, _) = await server.ConnectAsync(Count);
        try
        {
            foreach (var client in clients)
            {
                Assert.Equal("hello\n", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(6)));
            }
        }
        finally
        {
            stop.Cancel();
            output.WriteLine($"{await broadcaster.WithTimeout()} broadcasts while {Count} connections opted in");
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    /// <summary>What each loop's thread has allocated so far (GC.GetAllocatedBytesForCurrentThread, read on the loop).</summary>
    private static async Task<long> LoopAllocatedBytesAsync(Transport.Epoll.Internal.EpollLoop[] loops)
    {
        long total = 0;
        foreach (var loop in loops)
        {
            var read = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            loop.Schedule(static state => ((TaskCompletionSource<long>)state!).SetResult(GC.GetAllocatedBytesForCurrentThread()), read);
            total += await read.Task.WithTimeout();
        }

        return total;
    }

    /// <summary>64 bytes that say which broadcast they are.</summary>
    private static byte[] Message(int round)
    {
        var bytes = new byte[64];
        Encoding.ASCII.GetBytes($"broadcast {round,6}").CopyTo(bytes, 0);
        bytes.AsSpan(16).Fill((byte)('a' + ((round + 26) % 26)));
        return bytes;
    }

    /// <summary>Every client reads exactly <paramref name="expected"/>, in order (synchronous receives: no allocation).</summary>
    private static void ReadAll(Socket[] clients, byte[][] expected)
    {
        int total = expected.Sum(m => m.Length);
        var buffer = new byte[total];
        var whole = expected.SelectMany(m => m).ToArray();
        for (int c = 0; c < clients.Length; c++)
        {
            int read = 0;
            while (read < total)
            {
                int n = clients[c].Receive(buffer, read, total - read, SocketFlags.None);
                Assert.True(n > 0, $"connection {c} ended after {read} of {total} bytes");
                read += n;
            }

            Assert.True(buffer.AsSpan().SequenceEqual(whole), $"connection {c} received other bytes");
        }
    }
}

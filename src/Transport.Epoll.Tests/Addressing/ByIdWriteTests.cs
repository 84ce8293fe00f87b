using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>
/// Writing to connections by id from other threads (IEpollConnections; docs/ARCHITECTURE.md, "Addressing by id"): a
/// stale id never delivers, messages arrive whole and in each writer's order on the right connection only, a peer that
/// does not read makes writes Full with memory bounded, and the awaitable write wakes when it reads.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class ByIdWriteTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_stale_id_is_gone_and_nothing_reaches_the_connection_that_got_its_fd()
    {
        // One loop, so A's fd is the lowest free number when B is accepted.
        await using var server = await AddressableServer.StartAsync(output, o => o.ThreadCount = 1);
        IEpollConnections connections = server.Connections;

        for (int attempt = 1; ; attempt++)
        {
            using var clientA = await Client.ConnectAsync(server.Server.EndPoint);
            AddressedConnection a = await server.NextAsync();
            Assert.Equal(EpollWriteResult.Written, connections.Write(a.Id, "A1\n"u8));
            Assert.Equal("A1\n", Encoding.ASCII.GetString(await clientA.ReceiveExactlyAsync(3)));

            // B's client socket takes its fd now, before A's server fd is freed, so the next accept can get A's number.
            using var clientB = new Socket(server.Server.IPEndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            clientA.Shutdown(SocketShutdown.Send);
            await a.HandlerDone.WithTimeout();
            await Poll.UntilAsync(() => !connections.TryGetInfo(a.Id, out _));

            using var cts = Timeouts.Cts();
            await clientB.ConnectAsync(server.Server.EndPoint, cts.Token);
            AddressedConnection b = await server.NextAsync();
            if (b.Fd != a.Fd)
            {
                Assert.True(attempt < 20, $"the kernel never handed A's fd {a.Fd} to B in {attempt} attempts");
                continue;
            }

            Assert.NotEqual(a.Id, b.Id);

            // From another thread, by A's old id: every call answers "gone" and nothing is sent.
            var stale = await Task.Run(() => (
                Write: connections.Write(a.Id, "stale\n"u8),
                Async: connections.WriteAsync(a.Id, "stale\n"u8.ToArray()).AsTask().GetAwaiter().GetResult(),
                Close: connections.Close(a.Id),
                Abort: connections.Abort(a.Id),
                Broadcast: connections.Broadcast([a.Id], "stale\n"u8),
                Info: connections.TryGetInfo(a.Id, out _),
                Listed: connections.GetIds().Contains(a.Id))).WithTimeout();
            Assert.Equal((EpollWriteResult.Gone, EpollWriteResult.Gone, false, false, 0, false, false), stale);

            // B receives exactly what was written to B: nothing of A's before it.
            Assert.Equal(EpollWriteResult.Written, connections.Write(b.Id, "B1\n"u8));
            Assert.Equal(EpollWriteResult.Written, connections.Write(b.Id, "END\n"u8));
            Assert.Equal("B1\nEND\n", Encoding.ASCII.GetString(await clientB.ReceiveExactlyAsync(7)));
            output.WriteLine($"A {a.Id:X16} and B {b.Id:X16} shared fd {a.Fd} (attempt {attempt})");
            clientB.Shutdown(SocketShutdown.Send);
            await b.HandlerDone.WithTimeout();
            return;
        }
    }

    [Fact]
    public async Task Sixty_four_threads_writing_to_a_thousand_connections_deliver_every_message_whole_in_order_on_its_own_connection()
    {
        const int Connections = 1000;
        const int Writers = 64;
        const int MessagesPerWriter = 4;
        const int HandlerFlushes = 32;
        var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // Each connection's handler writes records of its own at the same time (writer -1): messages by id must never
        // land inside one of its flushes.
        await using var server = await AddressableServer.StartAsync(output, o => o.ThreadCount = 2, body: (connection, id) =>
        {
            _ = Task.Run(async () =>
            {
                // At the same time as the writers by id.
                await go.Task;
                for (int seq = 0; seq < HandlerFlushes; seq++)
                {
                    // The connection's index is known to the test only: the handler's records carry -1 as connection and writer.
                    await connection.Transport.Output.WriteAsync(ByIdRecord.Message(-1, -1, seq));
                }
            });
            return Task.CompletedTask;
        });
        IEpollConnections connections = server.Connections;
        var (clients, accepted) = await server.ConnectAsync(Connections);
        try
        {
            var expectedBytes = new long[Connections];
            for (int c = 0; c < Connections; c++)
            {
                expectedBytes[c] = Enumerable.Range(0, HandlerFlushes).Sum(seq => ByIdRecord.MessageLength(-1, seq));
                for (int w = 0; w < Writers; w++)
                {
                    for (int s = 0; s < MessagesPerWriter; s++)
                    {
                        expectedBytes[c] += ByIdRecord.MessageLength(w, s);
                    }
                }
            }

            var receives = clients.Select((client, c) => client.ReceiveExactlyAsync((int)expectedBytes[c], Timeouts.Bulk)).ToArray();
            using var start = new Barrier(Writers);
            var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var threads = Enumerable.Range(0, Writers).Select(w => new Thread(() =>
            {
                start.SignalAndWait();
                for (int s = 0; s < MessagesPerWriter; s++)
                {
                    for (int c = 0; c < Connections; c++)
                    {
                        byte[] message = ByIdRecord.Message(c, w, s);
                        EpollWriteResult result = connections.Write(accepted[c].Id, message);
                        if (result == EpollWriteResult.Full)
                        {
                            result = connections.WriteAsync(accepted[c].Id, message).AsTask().WaitAsync(Timeouts.Bulk).GetAwaiter().GetResult();
                        }

                        if (result != EpollWriteResult.Written)
                        {
                            failures.Enqueue($"writer {w} message {s} to connection {c}: {result}");
                        }
                    }
                }
            }) { IsBackground = true }).ToList();
            threads.ForEach(t => t.Start());
            go.SetResult();
            foreach (var thread in threads)
            {
                Assert.True(await Task.Run(() => thread.Join(Timeouts.Bulk)), "a writer thread did not finish");
            }

            Assert.Empty(failures);
            byte[][] received = await Task.WhenAll(receives).WithTimeout(Timeouts.Bulk);
            for (int c = 0; c < Connections; c++)
            {
                string? problem = ByIdRecord.Check(received[c], c, Writers, MessagesPerWriter, HandlerFlushes);
                Assert.True(problem is null, problem);
            }
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
    public async Task A_peer_that_never_reads_makes_writes_Full_with_memory_bounded_and_WriteAsync_wakes_when_it_reads()
    {
        const int Limit = 64 * 1024;
        const int MessageSize = 8 * 1024;
        await using var server = await AddressableServer.StartAsync(output, o => o.MaxWriteBufferSize = Limit);
        IEpollConnections connections = server.Connections;
        using var client = await Client.ConnectAsync(server.Server.EndPoint, s => s.ReceiveBufferSize = 4096);
        AddressedConnection accepted = await server.NextAsync();

        // Write until Full: the kernel's buffers fill first (the client never reads), then the queue up to the limit.
        int written = 0;
        EpollWriteResult result = EpollWriteResult.Written;
        for (int i = 0; i < 100_000 && result == EpollWriteResult.Written; i++)
        {
            result = connections.Write(accepted.Id, Numbered(written, MessageSize));
            if (result == EpollWriteResult.Written)
            {
                written++;
            }
            else if (result == EpollWriteResult.Full)
            {
                // Full may be momentary while the loop is still moving the queue into the kernel: go on until the
                // queue holds still, so what follows depends on the peer alone.
                long queued = await Poll.UntilStableAsync(() => connections.TryGetInfo(accepted.Id, out var info) ? info.QueuedBytes : -1, TimeSpan.FromMilliseconds(300));
                if (queued + MessageSize <= Limit)
                {
                    result = EpollWriteResult.Written;
                }
            }
        }

        Assert.Equal(EpollWriteResult.Full, result);
        Assert.True(connections.TryGetInfo(accepted.Id, out EpollConnectionInfo? full));
        output.WriteLine($"{written} messages of {MessageSize} bytes written, {full.QueuedBytes} queued at Full");
        Assert.InRange(full.QueuedBytes, (Limit / 2) + 1, Limit + MessageSize);

        // Refused alike by a write and by a broadcast by ids, and both counted in epoll.byid.refused.
        var refused = await TransportMetrics.CollectAsync(server.Server, () =>
        {
            Assert.Equal(EpollWriteResult.Full, connections.Write(accepted.Id, Numbered(-1, MessageSize)));
            Assert.Equal(0, connections.Broadcast([accepted.Id], Numbered(-1, MessageSize)));
            return Task.CompletedTask;
        });
        Assert.Equal(2, refused.GetValueOrDefault("epoll.byid.refused"));

        // A cancelled wait queues nothing.
        using (var cts = new CancellationTokenSource())
        {
            ValueTask<EpollWriteResult> cancelled = connections.WriteAsync(accepted.Id, Numbered(-1, MessageSize), cts.Token);
            Assert.False(cancelled.IsCompleted);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.AsTask().WithTimeout());
        }

        Task<EpollWriteResult> waiting = connections.WriteAsync(accepted.Id, Numbered(written, MessageSize)).AsTask();
        Assert.False(waiting.IsCompleted);

        // The peer reads: the queue drains, the waiting write is queued, and every message arrives whole and in order.
        byte[] all = await client.ReceiveExactlyAsync((written + 1) * MessageSize, Timeouts.Bulk);
        Assert.Equal(EpollWriteResult.Written, await waiting.WithTimeout());
        for (int m = 0; m <= written; m++)
        {
            Assert.Equal(m, BinaryPrimitives.ReadInt32LittleEndian(all.AsSpan(m * MessageSize)));
        }
    }

    [Fact]
    public async Task Close_by_id_sends_what_was_queued_then_ends_the_connection_and_abort_resets_it()
    {
        await using var server = await AddressableServer.StartAsync(output);
        IEpollConnections connections = server.Connections;
        var (clients, accepted) = await server.ConnectAsync(2);
        using var closed = clients[0];
        using var aborted = clients[1];

        Assert.True(connections.TryGetInfo(accepted[0].Id, out EpollConnectionInfo? info));
        Assert.Equal(EpollConnectionState.Open, info.State);
        Assert.Equal(EpollConnectionDirection.Inbound, info.Direction);
        Assert.Equal(server.Server.EndPoint, info.ListenEndPoint);
        Assert.Equal(closed.LocalEndPoint, info.RemoteEndPoint);
        Assert.Contains(accepted[0].Id, connections.GetIds(server.Server.EndPoint));

        Assert.Equal(EpollWriteResult.Written, connections.Write(accepted[0].Id, "one\n"u8));
        Assert.Equal(EpollWriteResult.Written, connections.Write(accepted[0].Id, "two\n"u8));
        Assert.True(connections.Close(accepted[0].Id));
        Assert.Equal(EpollWriteResult.Gone, connections.Write(accepted[0].Id, "after\n"u8));
        Assert.Equal("one\ntwo\n", Encoding.ASCII.GetString(await closed.ReceiveToEndAsync()));
        await accepted[0].HandlerDone.WithTimeout();
        Assert.False(connections.Close(accepted[0].Id));

        Assert.True(connections.Abort(accepted[1].Id));
        await Assert.ThrowsAsync<SocketException>(async () => await aborted.ReceiveToEndAsync());
        await accepted[1].HandlerDone.WithTimeout();
        Assert.False(connections.TryGetInfo(accepted[1].Id, out _));
    }

    [Fact]
    public async Task A_file_sent_by_id_goes_out_whole_between_the_messages_around_it()
    {
        await using var server = await AddressableServer.StartAsync(output);
        IEpollConnections connections = server.Connections;
        using var client = await Client.ConnectAsync(server.Server.EndPoint);
        AddressedConnection accepted = await server.NextAsync();

        byte[] content = Client.RandomBytes(3 * 1024 * 1024, seed: 13);
        string path = Path.Combine(Path.GetTempPath(), $"byid-{Guid.NewGuid():N}.bin");
        await File.WriteAllBytesAsync(path, content);
        try
        {
            using var file = File.OpenHandle(path);
            Assert.Equal(EpollWriteResult.Written, connections.Write(accepted.Id, "before\n"u8));
            Task<byte[]> receive = client.ReceiveExactlyAsync(7 + content.Length + 6, Timeouts.Bulk);
            Task<EpollWriteResult> sending = connections.SendFileAsync(accepted.Id, file, 0, content.Length);
            Assert.Equal(EpollWriteResult.Written, connections.Write(accepted.Id, "after\n"u8));
            Assert.Equal(EpollWriteResult.Written, await sending.WithTimeout(Timeouts.Bulk));
            byte[] received = await receive.WithTimeout(Timeouts.Bulk);
            Assert.Equal("before\n", Encoding.ASCII.GetString(received, 0, 7));
            Assert.Equal(Client.Sha256(content), Client.Sha256(received.AsSpan(7, content.Length)));
            Assert.Equal("after\n", Encoding.ASCII.GetString(received, 7 + content.Length, 6));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task The_handlers_own_file_waits_for_a_file_sent_by_id_and_neither_is_cut()
    {
        byte[] byId = Client.RandomBytes(4 * 1024 * 1024, seed: 21);
        byte[] own = Client.RandomBytes(1024 * 1024, seed: 22);
        string byIdPath = Path.Combine(Path.GetTempPath(), $"byid-a-{Guid.NewGuid():N}.bin");
        string ownPath = Path.Combine(Path.GetTempPath(), $"byid-b-{Guid.NewGuid():N}.bin");
        await File.WriteAllBytesAsync(byIdPath, byId);
        await File.WriteAllBytesAsync(ownPath, own);
        var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ownSent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            await using var server = await AddressableServer.StartAsync(output, body: async (connection, id) =>
            {
                await go.Task;
                try
                {
                    using var file = File.OpenHandle(ownPath);
                    connection.Transport.Output.Write("H\n"u8);
                    await connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, 0, own.Length);
                    await connection.Transport.Output.WriteAsync("T\n"u8.ToArray());
                    ownSent.TrySetResult();
                }
                catch (Exception e)
                {
                    ownSent.TrySetException(e);
                }
            });
            IEpollConnections connections = server.Connections;

            // The client does not read yet: the file by id is still going out when the handler sends its own (most
            // likely; if the loop has not taken it from the queue yet, the handler's goes first, also whole).
            using var client = await Client.ConnectAsync(server.Server.EndPoint, s => s.ReceiveBufferSize = 4096);
            AddressedConnection accepted = await server.NextAsync();
            using var byIdFile = File.OpenHandle(byIdPath);
            Task<EpollWriteResult> sending = connections.SendFileAsync(accepted.Id, byIdFile, 0, byId.Length);
            Assert.True(await Poll.UntilAsync(() => connections.TryGetInfo(accepted.Id, out var info) && info.QueuedBytes == 0 && !sending.IsCompleted));
            go.SetResult();

            byte[] received;
            try
            {
                received = await client.ReceiveExactlyAsync(byId.Length + 2 + own.Length + 2, Timeouts.Bulk);
            }
            catch (PartialReceiveException e)
            {
                string send = "connection gone";
                if (ConnectionTable.Shared.Find(accepted.Id) is EpollConnection stuck)
                {
                    var described = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
                    stuck.Loop.Schedule(_ => described.TrySetResult(stuck.DescribeSendForTest()), null);
                    send = await described.Task.WaitAsync(TimeSpan.FromSeconds(5));
                }

                throw new Xunit.Sdk.XunitException($"{e.Message} {Describe(e.Received, byId, own)}; by id: {(sending.IsCompleted ? sending.Status : "sending")}, handler: {(ownSent.Task.IsCompleted ? ownSent.Task.Status : "sending")}; {send}");
            }

            Assert.Equal(EpollWriteResult.Written, await sending.WithTimeout());
            await ownSent.Task.WithTimeout();
            // The file by id lands whole between two of the handler's units: "H\n" and its file (one flush, then the
            // file, with nothing between them), and "T\n" (a flush of its own).
            byte[] h = "H\n"u8.ToArray();
            byte[] t = "T\n"u8.ToArray();
            (string Order, byte[] Bytes)[] allowed =
            [
                ("the file by id first; the handler's file waited for it", [.. byId, .. h, .. own, .. t]),
                ("the handler's file first, the file by id before its last flush", [.. h, .. own, .. byId, .. t]),
                ("the handler's file and last flush first", [.. h, .. own, .. t, .. byId]),
            ];
            var match = allowed.FirstOrDefault(a => received.AsSpan().SequenceEqual(a.Bytes));
            Assert.True(match.Bytes is not null, "the stream is not the file by id, whole, between two of the handler's units: " + Describe(received, byId, own));
            output.WriteLine(match.Order);
        }
        finally
        {
            File.Delete(byIdPath);
            File.Delete(ownPath);
        }
    }

    private static byte[] Numbered(int number, int size)
    {
        var bytes = new byte[size];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, number);
        return bytes;
    }

    /// <summary>Where the pieces are in a stream that matched no allowed order (for the failure message).</summary>
    private static string Describe(byte[] received, byte[] byId, byte[] own)
    {
        int byIdAt = received.AsSpan().IndexOf(byId.AsSpan(0, 64));
        int ownAt = received.AsSpan().IndexOf(own.AsSpan(0, 64));
        int h = received.AsSpan().IndexOf("H\n"u8);
        int t = received.AsSpan().LastIndexOf("T\n"u8);
        return $"by-id file starts at {byIdAt}, handler's file at {ownAt}, H at {h}, T at {t}, {received.Length} bytes";
    }
}

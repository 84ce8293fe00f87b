using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>
/// Floods and hostile peers, CI-sized (the stress scripts run the big versions): fd exhaustion, many concurrent
/// connections, a connect/close/reset storm, and the fd-collision race. Serial: they count fds, watch the connection
/// table, or load the machine.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class FloodTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Out_of_fds_the_server_keeps_its_connections_does_not_spin_and_accepts_again_once_fds_are_free()
    {
        // The .NET runtime itself fails fast ("Out of memory.") when it cannot get an fd of its own while the process
        // is out of them (a garbage collection reading /proc/meminfo: the README's limits; Sockets the same): a gen0
        // budget of 256 MB keeps collections out of the exhaustion window, so what this test sees is the transport's.
        await using var sample = await SampleProcess.StartAsync(output: output, environment: new Dictionary<string, string> { ["DOTNET_GCgen0size"] = "0x10000000" });

        // Warm up so the assemblies a request needs are loaded (and their fds taken) before the fds run out, then
        // leave the sample room for about a hundred connections.
        Assert.True(await IntegrityWorkload.ServesPlaintextAsync(sample, attempts: 1), "The sample does not serve.\n" + sample.Tail());
        using (var warmUp = await Client.ConnectAsync(sample.EchoEndPoint))
        {
            await warmUp.SendAllAsync("warm-up");
            await warmUp.ReceiveExactlyAsync(7);
        }

        int fdLimit = sample.LimitFds(headroom: 100);
        Assert.Contains(File.ReadLines($"/proc/{sample.Pid}/limits"), l => l.StartsWith("Max open files", StringComparison.Ordinal) && l.Contains($" {fdLimit} ", StringComparison.Ordinal));

        using var cts = Timeouts.Cts(Timeouts.Bulk * 2);
        var served = new List<Socket>();
        Socket? unserved = null;
        Task<byte[]>? unservedEcho = null;
        byte[] unservedMessage = [];
        try
        {
            // Connect until a connection is not served: the kernel completes it into the backlog, but accept4 fails.
            for (int i = 0; i < fdLimit && unserved is null; i++)
            {
                var socket = await Client.ConnectAsync(sample.EchoEndPoint);
                byte[] message = Encoding.ASCII.GetBytes($"#{i:D4};");
                await socket.SendAllAsync(message);
                var echo = ReceiveExactlyUntilAsync(socket, message.Length, cts.Token);
                if (await Task.WhenAny(echo, Task.Delay(TimeSpan.FromSeconds(1.5), cts.Token)) == echo)
                {
                    Assert.Equal(message, await echo);
                    served.Add(socket);
                }
                else
                {
                    (unserved, unservedEcho, unservedMessage) = (socket, echo, message);
                }
            }

            Assert.True(unserved is not null, $"{served.Count} connections, all served: the server never ran out of fds.");
            string backOff = await sample.WaitForLineAsync("EMFILE");
            output.WriteLine($"{served.Count} connections served, then: {backOff}; the sample has {sample.OpenFdCount()} fds open (limit {fdLimit}).");

            // While exhausted: CPU over a 2 s window (a loop that kept retrying accept4 would burn a core).
            var cpuBefore = sample.CpuTime();
            var window = Stopwatch.StartNew();
            await Task.Delay(TimeSpan.FromSeconds(2), cts.Token);
            double share = (sample.CpuTime() - cpuBefore) / window.Elapsed;
            output.WriteLine($"CPU while out of fds: {share:P1} of a core.");
            Assert.True(share < 0.30, $"The server used {share:P1} of a core while out of fds: it spins instead of backing off.\n{sample.Tail()}");

            // Running out of fds is an ordinary condition: a warning, never an error or a crash.
            sample.AssertNoUnexpectedFailures("Out of fds");

            // The connections it had still work.
            await Task.WhenAll(served.Select(async (socket, i) =>
            {
                byte[] message = Encoding.ASCII.GetBytes($"again {i};");
                await socket.SendAllAsync(message);
                Assert.Equal(message, await socket.ReceiveExactlyAsync(message.Length));
            })).WithTimeout();
            Assert.False(unservedEcho!.IsCompleted, "The connection that was not accepted got an answer while the server was out of fds.");

            // Free fds: the server accepts again, first the connection that waited in the backlog, then new ones.
            foreach (var socket in served.Skip(10))
            {
                socket.Dispose();
            }

            Assert.Equal(unservedMessage, await unservedEcho.WithTimeout());
            using var fresh = await Client.ConnectAsync(sample.EchoEndPoint);
            await fresh.SendAllAsync("fresh");
            Assert.Equal("fresh"u8.ToArray(), await fresh.ReceiveExactlyAsync(5));
            Assert.False(sample.HasExited, sample.Tail());
        }
        finally
        {
            unserved?.Dispose();
            foreach (var socket in served)
            {
                socket.Dispose();
            }
        }
    }

    [Fact]
    public async Task Two_thousand_concurrent_connections_are_all_served()
    {
        const int Connections = 2000;

        // Client and server ends both live in this process.
        ulong needed = (ulong)(ProcessInfo.OpenFdCount() + (2 * Connections) + 512);
        ulong limit = Native.EnsureFdLimit(needed);
        Assert.True(limit >= needed, $"RLIMIT_NOFILE is {limit} (hard {Native.GetFdLimit().Maximum}); the test needs {needed}.");

        int active = 0, maxActive = 0;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            int now = Interlocked.Increment(ref active);
            int seen;
            while ((seen = Volatile.Read(ref maxActive)) < now && Interlocked.CompareExchange(ref maxActive, now, seen) != seen)
            {
            }

            try
            {
                await Handlers.EchoUntilResetAsync(connection);
            }
            finally
            {
                Interlocked.Decrement(ref active);
            }
        }, output: output);

        var sockets = new Socket[Connections];
        var stopwatch = Stopwatch.StartNew();
        using var throttle = new SemaphoreSlim(200);
        try
        {
            await Task.WhenAll(Enumerable.Range(0, Connections).Select(async i =>
            {
                await throttle.WaitAsync();
                try
                {
                    sockets[i] = await Client.ConnectAsync(server.EndPoint, timeout: Timeouts.Bulk);
                }
                finally
                {
                    throttle.Release();
                }
            })).WithTimeout(Timeouts.Bulk);
            output.WriteLine($"{Connections} connected in {stopwatch.ElapsedMilliseconds} ms.");

            await Task.WhenAll(sockets.Select(async (socket, i) =>
            {
                byte[] payload = Encoding.ASCII.GetBytes($"connection {i:D5}|{new string((char)('a' + (i % 26)), i % 200)}");
                await socket.SendAllAsync(payload, Timeouts.Bulk);
                Assert.Equal(payload, await socket.ReceiveExactlyAsync(payload.Length, Timeouts.Bulk));
            })).WithTimeout(Timeouts.Bulk);
            output.WriteLine($"{Connections} echoed by {stopwatch.ElapsedMilliseconds} ms; at most {maxActive} open at once.");
            Assert.True(Volatile.Read(ref maxActive) >= Connections, $"Only {maxActive} of {Connections} connections were open at once.");

            await Task.WhenAll(sockets.Select(async socket =>
            {
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk));
            })).WithTimeout(Timeouts.Bulk);
        }
        finally
        {
            foreach (var socket in sockets)
            {
                socket?.Dispose();
            }
        }

        Assert.True(await Poll.UntilAsync(() => Volatile.Read(ref active) == 0), $"{active} handlers still running.");
    }

    [Fact]
    public async Task A_storm_of_connects_and_closes_half_of_them_resets_leaves_no_fd_or_table_slot_behind()
    {
        const int Storm = 5000;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, Handlers.EchoUntilResetAsync, output: output);
        for (int i = 0; i < 20; i++)
        {
            await EchoRoundTripAsync(server, $"warm-up {i}");
        }

        int fdBaseline = await SettledFdCountAsync();
        int tableBaseline = ConnectionTable.Shared.Count;

        // As fast as the client can: connect, then close (FIN) or reset (RST), 16 at a time.
        int next = -1, failures = 0;
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < Storm)
            {
                Socket socket;
                try
                {
                    socket = await Client.ConnectAsync(server.EndPoint);
                }
                catch (SocketException)
                {
                    // A full backlog refuses; counted, and bounded below.
                    Interlocked.Increment(ref failures);
                    continue;
                }

                if (i % 2 == 0)
                {
                    socket.Reset();
                }
                else
                {
                    socket.Dispose();
                }
            }
        }))).WithTimeout(Timeouts.Bulk * 2);
        output.WriteLine($"{Storm} connect+close in {stopwatch.ElapsedMilliseconds} ms ({Storm * 1000.0 / stopwatch.ElapsedMilliseconds:F0}/s); {failures} connects refused.");
        Assert.True(failures < Storm / 100, $"{failures} of {Storm} connects failed.");

        // The server still serves, and everything it held for the storm is given back.
        await EchoRoundTripAsync(server, "after the storm");
        int fds = 0, table = 0;
        Assert.True(await Poll.UntilAsync(() => (fds = ProcessInfo.OpenFdCount()) <= fdBaseline + 8, Timeouts.Bulk), $"{fds - fdBaseline} fds more than before the storm (baseline {fdBaseline}).");
        Assert.True(await Poll.UntilAsync(() => (table = ConnectionTable.Shared.Count) == tableBaseline, Timeouts.Bulk), $"{table - tableBaseline} connection-table entries more than before the storm.");
    }

    [Fact]
    public async Task Under_churn_with_late_writes_to_closed_connections_every_byte_reaches_only_its_own_connection()
    {
        const int Connections = 6000;
        const int Workers = 64;
        var serverErrors = new ConcurrentQueue<string>();
        long lateWrites = 0;

        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var input = connection.Transport.Input;
            var writer = connection.Transport.Output;
            int tag = -1;
            long offset = 0;
            byte[] pending = new byte[TaggedRecord.Size];
            try
            {
                // Echo, checking that everything this connection receives carries one tag.
                while (true)
                {
                    var result = await input.ReadAsync();
                    foreach (var segment in result.Buffer)
                    {
                        writer.Write(segment.Span);
                        foreach (byte b in segment.Span)
                        {
                            pending[offset++ % TaggedRecord.Size] = b;
                            if (offset % TaggedRecord.Size == 0)
                            {
                                int received = TaggedRecord.Parse(pending);
                                if (tag == -1)
                                {
                                    tag = received;
                                }
                                else if (received != tag)
                                {
                                    serverErrors.Enqueue($"connection of tag {tag} received a record of tag {received} (raw {Convert.ToHexString(pending)}).");
                                }
                            }
                        }
                    }

                    input.AdvanceTo(result.Buffer.End);
                    var flush = await writer.FlushAsync();
                    if (result.IsCompleted || flush.IsCompleted)
                    {
                        break;
                    }
                }
            }
            catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException)
            {
            }

            // The peer is gone or has half-closed: write late, from another thread, after a moment in which the fd
            // may well have been closed and handed to a new connection.
            if (tag >= 0)
            {
                await Task.Yield();
                byte[] late = TaggedRecord.Repeat(tag, 64);
                for (int i = 0; i < 8; i++)
                {
                    try
                    {
                        writer.Write(late);
                        Interlocked.Increment(ref lateWrites);
                        if ((await writer.FlushAsync()).IsCompleted)
                        {
                            break;
                        }
                    }
                    catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException)
                    {
                        // The output ended with the peer's reset or an abort: the flush reports it.
                        break;
                    }
                }
            }
        }, output: output);

        int nextTag = 0;
        long verifiedRecords = 0, lateRecordsSeen = 0;
        var clientErrors = new ConcurrentQueue<string>();
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            int tag;
            while ((tag = Interlocked.Increment(ref nextTag)) <= Connections)
            {
                using var socket = await Client.ConnectAsync(server.EndPoint);
                byte[] records = TaggedRecord.Repeat(tag, 16);
                try
                {
                    switch (tag % 4)
                    {
                        case 0:
                        {
                            // The witness: sends, half-closes, and reads to EOF, the late writes included.
                            await socket.SendAllAsync(records);
                            await socket.SendAllAsync(records);
                            socket.Shutdown(SocketShutdown.Send);
                            byte[] all = await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk);
                            if (TaggedRecord.Check(all, tag) is { } error)
                            {
                                clientErrors.Enqueue(error);
                            }
                            else if (all.Length < 2 * records.Length)
                            {
                                clientErrors.Enqueue($"connection of tag {tag}: only {all.Length} of {2 * records.Length} echoed bytes before EOF.");
                            }

                            Interlocked.Add(ref verifiedRecords, all.Length / TaggedRecord.Size);
                            Interlocked.Add(ref lateRecordsSeen, (all.Length - (2 * records.Length)) / TaggedRecord.Size);
                            break;
                        }

                        case 1:
                            // Sends and resets at once: the server's echo and late writes are for a dead connection.
                            await socket.SendAllAsync(records);
                            socket.Reset();
                            break;
                        case 2:
                            // Sends and closes without reading (the unread echo makes the kernel reset).
                            await socket.SendAllAsync(records);
                            socket.Close();
                            break;
                        default:
                        {
                            // Reads part of its echo, checks it, then resets.
                            await socket.SendAllAsync(records);
                            byte[] some = await socket.ReceiveExactlyAsync(records.Length / 2, Timeouts.Bulk);
                            if (TaggedRecord.Check(some, tag) is { } error)
                            {
                                clientErrors.Enqueue(error);
                            }

                            Interlocked.Add(ref verifiedRecords, some.Length / TaggedRecord.Size);
                            socket.Reset();
                            break;
                        }
                    }
                }
                catch (SocketException) when (tag % 4 is 1 or 2)
                {
                    // A peer that resets may see its own send fail.
                }
            }
        }))).WithTimeout(Timeouts.Bulk * 2);

        output.WriteLine($"{Connections} connections in {stopwatch.ElapsedMilliseconds} ms; {verifiedRecords} records verified by clients, {lateRecordsSeen} of them written late; {lateWrites} late writes issued.");
        Assert.True(clientErrors.IsEmpty, $"{clientErrors.Count} clients received bytes that were not theirs:\n{string.Join('\n', clientErrors.Take(10))}");
        Assert.True(serverErrors.IsEmpty, $"{serverErrors.Count} server connections received bytes that were not theirs:\n{string.Join('\n', serverErrors.Take(10))}");
        Assert.True(lateRecordsSeen > 0, "No late write reached its (half-closed) connection: the test did not exercise late writes.");
        Assert.True(Interlocked.Read(ref lateWrites) > Connections / 2, $"Only {lateWrites} late writes were issued.");
    }

    [Fact]
    public async Task Aborts_and_resets_that_meet_sends_from_other_threads_never_hand_bytes_to_another_connection()
    {
        // Every server connection writes its tag from the thread pool as fast as it can (so its sends run on the
        // flushing thread), while the connection ends under it: the client resets, closes unread, or the server
        // aborts from yet another thread. The fds are reused all the time; every byte a client sees must be its own.
        const int Connections = 1500;
        const int Workers = 32;
        const int MaxBytesPerConnection = 1024 * 1024;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var input = connection.Transport.Input;
            var result = await input.ReadAtLeastAsync(TaggedRecord.Size);
            if (result.Buffer.Length < TaggedRecord.Size)
            {
                return;
            }

            int tag = TaggedRecord.Parse(result.Buffer.Slice(0, TaggedRecord.Size).ToArray());
            input.AdvanceTo(result.Buffer.End);
            byte[] records = TaggedRecord.Repeat(tag, 4096); // 32 KiB flushes: large enough to be sent on the flushing thread
            try
            {
                for (int written = 0, flushes = 0; written < MaxBytesPerConnection; written += records.Length, flushes++)
                {
                    if (tag % 3 == 2 && flushes == 4)
                    {
                        // The server's own abort, from a thread other than the writer's, while the writes go on.
                        ThreadPool.UnsafeQueueUserWorkItem(c => c.Abort(new ConnectionAbortedException("test abort")), connection, preferLocal: false);
                    }

                    if ((await connection.Transport.Output.WriteAsync(records)).IsCompleted)
                    {
                        break;
                    }
                }
            }
            catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException)
            {
            }
        }, output: output);

        int nextTag = 0;
        long verified = 0;
        var clientErrors = new ConcurrentQueue<string>();
        await Task.WhenAll(Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            int tag;
            while ((tag = Interlocked.Increment(ref nextTag)) <= Connections)
            {
                using var socket = await Client.ConnectAsync(server.EndPoint);
                try
                {
                    await socket.SendAllAsync(TaggedRecord.Repeat(tag, 1));
                    byte[] some = tag % 3 == 2
                        ? await ReceiveUntilEndOrResetAsync(socket, MaxBytesPerConnection + 1)
                        : await socket.ReceiveExactlyAsync(16 * 1024, Timeouts.Bulk);
                    int whole = some.Length - (some.Length % TaggedRecord.Size);
                    if (TaggedRecord.Check(some[..whole], tag) is { } error)
                    {
                        clientErrors.Enqueue(error);
                    }

                    Interlocked.Add(ref verified, whole / TaggedRecord.Size);
                    if (tag % 3 == 0)
                    {
                        socket.Reset();
                    }
                }
                catch (SocketException)
                {
                    // The server's abort can reset a client before it reads anything.
                }
            }
        }))).WithTimeout(Timeouts.Bulk * 2);

        var metrics = await TransportMetrics.CollectAsync(server);
        output.WriteLine($"{Connections} connections, {verified} records verified; sendmsg calls {metrics.GetValueOrDefault("epoll.syscalls.write")}, on flushing threads {metrics.GetValueOrDefault("epoll.writes.flushing_thread")}.");
        Assert.True(clientErrors.IsEmpty, $"{clientErrors.Count} clients received bytes that were not theirs:\n{string.Join('\n', clientErrors.Take(10))}");
        Assert.True(metrics.GetValueOrDefault("epoll.writes.flushing_thread") > Connections, "Hardly any send ran on a flushing thread: the race was not exercised.");
        Assert.True(verified > Connections * 100L, $"Only {verified} records reached the clients.");
    }

    /// <summary>Reads until EOF or a reset, whichever ends the connection; what arrived before it.</summary>
    private static async Task<byte[]> ReceiveUntilEndOrResetAsync(Socket socket, int maxBytes)
    {
        var received = new MemoryStream();
        var buffer = new byte[64 * 1024];
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token)) > 0 && received.Length < maxBytes)
            {
                received.Write(buffer, 0, n);
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }

        return received.ToArray();
    }

    private static async Task EchoRoundTripAsync(TestServer server, string text)
    {
        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] message = Encoding.ASCII.GetBytes(text);
        await socket.SendAllAsync(message);
        Assert.Equal(message, await socket.ReceiveExactlyAsync(message.Length));
    }

    private static async Task<byte[]> ReceiveExactlyUntilAsync(Socket socket, int count, CancellationToken cancellationToken)
    {
        var buffer = new byte[count];
        int read = 0;
        while (read < count)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, cancellationToken);
            if (n == 0)
            {
                throw new EndOfStreamException($"EOF after {read} of {count} bytes.");
            }

            read += n;
        }

        return buffer;
    }

    private static async Task<int> SettledFdCountAsync() =>
        (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenFdCount(), TimeSpan.FromMilliseconds(300));
}

using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>Broadcast by id (IEpollConnections.Broadcast): every addressed connection gets the message, copied once per
/// event loop and shared by that loop's connections, not once per connection.</summary>
[Collection(SerialCollection.Name)]
public sealed class BroadcastTests(ITestOutputHelper output)
{
    private const int Count = 10_000;

    /// <summary>Broadcasts of each form measured for allocation, sent back to back; as many go before them, unmeasured,
    /// to warm the pools for as many in flight at once.</summary>
    private const int Rounds = 20;

    [Fact]
    public async Task A_broadcast_to_10000_connections_reaches_every_one_with_one_copy_per_loop()
    {
        // The clients are a child process (Addressing/broadcast_clients.py): holding both ends of 10,000 connections
        // takes 20,000 fds, and the hard RLIMIT_NOFILE of the test machines is 20,000. This process holds the server's
        // ends only; the child raises its own soft limit and fails loudly when it cannot hold its 10,000.
        ulong fdLimit = Native.EnsureFdLimit(Count + 1024);
        Assert.True(fdLimit >= Count + 1024, $"RLIMIT_NOFILE is {fdLimit}: the server's {Count} connections need {Count + 1024}");

        // The clients connect many at a time: a backlog as deep as the kernel allows (somaxconn caps it, listen(2))
        // keeps the accept queue from overflowing, where a dropped handshake costs a second's retransmission.
        await using var server = await AddressableServer.StartAsync(output, o =>
        {
            o.ThreadCount = 2;
            o.Backlog = 4096;
        });
        IEpollConnections connections = server.Connections;
        int socketBaseline = (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenSocketCount(), TimeSpan.FromMilliseconds(300));
        var fdsBefore = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        // Every connection must receive exactly these bytes, in this order: one broadcast of each form, then for each
        // form Rounds back to back that warm the pools for as many in flight, and Rounds measured the same way.
        Phase[] phases =
        [
            new("one broadcast to the endpoint", Messages(0, 1), ToEndPoint: true, Measured: false),
            new("one broadcast to the ids", Messages(1, 1), ToEndPoint: false, Measured: false),
            new($"{Rounds} warm-up broadcasts to the ids", Messages(2, Rounds), ToEndPoint: false, Measured: false),
            new($"{Rounds} broadcasts to the ids", Messages(2 + Rounds, Rounds), ToEndPoint: false, Measured: true),
            new($"{Rounds} warm-up broadcasts to the endpoint", Messages(2 + (2 * Rounds), Rounds), ToEndPoint: true, Measured: false),
            new($"{Rounds} broadcasts to the endpoint", Messages(2 + (3 * Rounds), Rounds), ToEndPoint: true, Measured: true),
        ];
        byte[] expected = [.. phases.SelectMany(p => p.Messages).SelectMany(m => m)];
        int[] checkpoints = new int[phases.Length - 1];
        for (int i = 0, offset = 0; i < checkpoints.Length; i++)
        {
            offset += phases[i].Messages.Sum(m => m.Length);
            checkpoints[i] = offset;
        }

        var clock = Stopwatch.StartNew();
        var clients = StartClients(server.Server.IPEndPoint, expected, checkpoints);
        try
        {
            string connected = await clients.WaitForStartLineAsync(l => l.StartsWith("connected ", StringComparison.Ordinal), "broadcast_clients.py");
            Assert.True(connected.StartsWith($"connected {Count} in ", StringComparison.Ordinal), $"{connected}\n{clients.Tail()}");

            // Each id as the handler saw it opt in (MakeAddressable), so the broadcasts below reach opted-in connections only.
            var ids = new ulong[Count];
            for (int i = 0; i < Count; i++)
            {
                ids[i] = (await server.NextAsync()).Id;
            }

            Assert.Equal(Count, ids.Distinct().Count());
            output.WriteLine($"{Count} connected and addressable after {clock.ElapsedMilliseconds} ms");

            // Measured: the caller's thread around the broadcasts alone; the loops' threads and the whole process until
            // every connection has received them all, so the loops' sends (and, for the endpoint form, their fan-out to
            // their connections) are inside their window.
            var loops = server.Server.App.Services.GetRequiredService<EpollTransportFactory>().Group!.Loops;
            var allocations = new List<(string Phase, double Caller, double Loops)>();
            string received = "";
            for (int p = 0; p < phases.Length; p++)
            {
                Phase phase = phases[p];
                int[] reached = new int[phase.Messages.Length];
                long loopsBefore = phase.Measured ? await LoopAllocatedBytesAsync(loops) : 0;
                long processBefore = GC.GetTotalAllocatedBytes(precise: true);
                long threadBefore = GC.GetAllocatedBytesForCurrentThread();
                for (int m = 0; m < phase.Messages.Length; m++)
                {
                    reached[m] = phase.ToEndPoint ? connections.Broadcast(server.Server.EndPoint, phase.Messages[m]) : connections.Broadcast(ids, phase.Messages[m]);
                }

                long threadAfter = GC.GetAllocatedBytesForCurrentThread();
                string line = await WaitForLineAsync(clients, p < checkpoints.Length ? $"reached {checkpoints[p]}" : "received ");
                long processAfter = GC.GetTotalAllocatedBytes(precise: true);
                long loopsAfter = phase.Measured ? await LoopAllocatedBytesAsync(loops) : 0;
                output.WriteLine($"{phase.Name} delivered after {clock.ElapsedMilliseconds} ms");
                Assert.True(reached.All(r => r == Count), $"{phase.Name}: Broadcast returned {string.Join(", ", reached.Distinct())}, not {Count}");
                received = line;
                if (phase.Measured)
                {
                    int rounds = phase.Messages.Length;
                    double caller = (threadAfter - threadBefore) / (double)rounds;
                    double byLoops = (loopsAfter - loopsBefore) / (double)rounds;
                    double process = (processAfter - processBefore) / (double)rounds;
                    output.WriteLine($"  per broadcast of {phase.Messages[0].Length} bytes to {Count} connections on {loops.Length} loops: {caller:F0} bytes allocated by the caller, "
                        + $"{byLoops:F0} by the loops, {process:F0} by the whole process (everything else running included); "
                        + $"a copy per connection would be {(long)Count * phase.Messages[0].Length} bytes");
                    allocations.Add((phase.Name, caller, byLoops));
                }
            }

            Assert.True(received == $"received exact={Count} short=0 wrong=0 eof=0 reset=0", $"{received}\n{clients.Tail()}");

            // The copies (one per loop, 64 bytes) come from a pool: once it is warm, neither side allocates per connection.
            foreach (var (phase, caller, byLoops) in allocations)
            {
                Assert.True(caller < 1024, $"{phase}: the caller allocated {caller:F0} bytes per broadcast");
                Assert.True(byLoops < 1024, $"{phase}: the loops allocated {byLoops:F0} bytes per broadcast");
            }

            // Every client half-closes and reads to the end: nothing may follow the broadcasts, and the server closes
            // each connection when its handler ends on the FIN.
            await clients.WriteLineAsync("close");
            string closed = await WaitForLineAsync(clients, "closed ");
            Assert.True(closed == $"closed clean={Count} extra=0 reset=0 timeout=0", $"{closed}\n{clients.Tail()}");
            int exitCode = await clients.WaitForExitAsync(Timeouts.Default, "broadcast_clients.py");
            Assert.True(exitCode == 0, $"broadcast_clients.py exited with {exitCode}:\n{clients.Tail()}");
            await clients.KillAsync();
            output.WriteLine($"all closed after {clock.ElapsedMilliseconds} ms");

            // Nothing leaked: the server's 10,000 sockets and table entries are all given back. Sockets, not every fd: the
            // runtime keeps fds of the assemblies it loads, and a first use of one may come meanwhile (seen in the full
            // suite: 15 .dll fds opened during this test). The serial collection runs alone, so no other test's
            // sockets come and go meanwhile.
            int sockets = 0;
            bool settled = await Poll.UntilAsync(() => (sockets = ProcessInfo.OpenSocketCount()) <= socketBaseline, Timeouts.Bulk);
            Assert.True(settled, $"{sockets - socketBaseline} sockets more than before the {Count} connections (baseline {socketBaseline}): {ProcessInfo.DescribeNewFds(fdsBefore)}");
            int slots = 0;
            Assert.True(
                await Poll.UntilAsync(() => (slots = ConnectionTable.Shared.Count) == tableBaseline, Timeouts.Bulk),
                $"{slots - tableBaseline} connection-table entries still taken after the {Count} connections closed");
            Assert.Empty(connections.GetIds(server.Server.EndPoint));
        }
        finally
        {
            await clients.KillAsync();
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

    /// <summary>
    /// Starts Addressing/broadcast_clients.py (copied next to the tests' binaries) with python3: <see cref="Count"/>
    /// connections to <paramref name="server"/> that must each receive exactly <paramref name="expected"/>.
    /// </summary>
    private ChildProcess StartClients(IPEndPoint server, byte[] expected, int[] checkpoints)
    {
        string script = Path.Combine(AppContext.BaseDirectory, "Addressing", "broadcast_clients.py");
        Assert.True(File.Exists(script), $"{script} is missing: the test project copies it to its output");
        var startInfo = new ProcessStartInfo("python3")
        {
            ArgumentList =
            {
                script,
                server.Address.ToString(),
                server.Port.ToString(CultureInfo.InvariantCulture),
                Count.ToString(CultureInfo.InvariantCulture),
                Convert.ToHexString(expected),
                string.Join(',', checkpoints),
                "60",
            },
            RedirectStandardInput = true,
        };
        try
        {
            return ChildProcess.Start(startInfo, output, "[clients] ");
        }
        catch (Win32Exception ex)
        {
            throw new InvalidOperationException("python3 could not be started (.ci/run installs it when it is missing): " + ex.Message, ex);
        }
    }

    /// <summary>Waits (<see cref="Timeouts.Bulk"/>) for the child's line starting with <paramref name="prefix"/>; the child's last lines (its stderr too) when it does not come.</summary>
    private static async Task<string> WaitForLineAsync(ChildProcess clients, string prefix)
    {
        try
        {
            return await clients.WaitForLineAsync(l => l.StartsWith(prefix, StringComparison.Ordinal), Timeouts.Bulk);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"broadcast_clients.py printed no '{prefix}' line within {Timeouts.Bulk.TotalSeconds:0} s (exited: {clients.HasExited}):\n{clients.Tail()}");
        }
    }

    /// <summary>What each loop's thread has allocated so far (GC.GetAllocatedBytesForCurrentThread, read on the loop).</summary>
    private static async Task<long> LoopAllocatedBytesAsync(EpollLoop[] loops)
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

    /// <summary>A run of broadcasts of one form (to the endpoint or to the ids), measured for allocation or not.</summary>
    private sealed record Phase(string Name, byte[][] Messages, bool ToEndPoint, bool Measured);

    /// <summary>Messages <paramref name="first"/> to <paramref name="first"/> + <paramref name="count"/> - 1.</summary>
    private static byte[][] Messages(int first, int count) => Enumerable.Range(first, count).Select(Message).ToArray();

    /// <summary>64 bytes that say which broadcast they are.</summary>
    private static byte[] Message(int round)
    {
        var bytes = new byte[64];
        Encoding.ASCII.GetBytes($"broadcast {round,6}").CopyTo(bytes, 0);
        bytes.AsSpan(16).Fill((byte)('a' + ((round + 26) % 26)));
        return bytes;
    }
}

using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// MSG_ZEROCOPY on loopback: the kernel accepts zero-copy sends and then reports that it copied them (loopback always
/// does), which must turn zero-copy off for the connection; until each completion arrives the bytes stay held.
/// The checks are the completion handling and the integrity of every byte; a speed-up cannot show here.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class ZeroCopyTests(ITestOutputHelper output)
{
    /// <summary>Sends <c>size</c> seeded bytes in writes of 256 KiB, then completes the output (graceful close).</summary>
    private static Func<ConnectionContext, Task> Sender(int size, int seed, List<EpollCloseReason> reasons) => async connection =>
    {
        byte[] data = Client.RandomBytes(size, seed);
        for (int offset = 0; offset < size; offset += 256 * 1024)
        {
            await connection.Transport.Output.WriteAsync(data.AsMemory(offset, Math.Min(256 * 1024, size - offset)));
        }

        await connection.Transport.Output.CompleteAsync();
        await Handlers.ReadToEndAsync(connection.Transport.Input);
        var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
        await Poll.UntilAsync(() => epoll.CloseReason != EpollCloseReason.None);
        lock (reasons)
        {
            reasons.Add(epoll.CloseReason);
        }
    };

    [Fact]
    public async Task Zero_copy_sends_complete_turn_off_when_copied_and_keep_every_byte()
    {
        const int size = 24 * 1024 * 1024;
        const int connections = 8;
        var reasons = new List<EpollCloseReason>();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, Sender(size, 5, reasons), o =>
        {
            o.ZeroCopyThreshold = 16 * 1024;
            o.MaxWriteBufferSize = 1024 * 1024;
        }, output);
        string expected = Client.Sha256(Client.RandomBytes(size, 5));
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            await Task.WhenAll(Enumerable.Range(0, connections).Select(async _ =>
            {
                // The client reads everything and only then closes: the server ends first (LocalClose), so a close
                // that aborted after waiting for completions shows as Aborted instead of hiding behind PeerClosed.
                using var socket = await Client.ConnectAsync(server.EndPoint);
                Assert.Equal(expected, Client.Sha256(await socket.ReceiveToEndAsync(maxBytes: size, timeout: Timeouts.Bulk)));
                socket.Shutdown(SocketShutdown.Send);
            })).WithTimeout(Timeouts.Bulk);
            Assert.True(await Poll.UntilAsync(() => { lock (reasons) { return reasons.Count == connections; } }));
        });

        output.WriteLine($"zero-copy sends {metrics.GetValueOrDefault("epoll.zerocopy.sends")}, completions {metrics.GetValueOrDefault("epoll.zerocopy.completions")}, copied {metrics.GetValueOrDefault("epoll.zerocopy.copied")}, writes {metrics.GetValueOrDefault("epoll.syscalls.write")}");
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") >= connections, "Not every connection sent zero-copy.");
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.completions") >= connections);

        // Loopback copies: every connection was told so and went back to plain sends for the rest.
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.copied") >= connections);
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") < metrics.GetValueOrDefault("epoll.syscalls.write"));

        // Every close waited for its completions and ended gracefully, none reset.
        Assert.All(reasons, r => Assert.Equal(EpollCloseReason.LocalClose, r));
        Assert.DoesNotContain(server.Logs.Entries, e => e.Message.Contains("zero-copy sends the kernel had not completed", StringComparison.Ordinal));
    }

    /// <summary>
    /// The client's 4 KiB window keeps most of the first (zero-copy) send in the kernel's send queue, so its completion
    /// cannot arrive before the abort: the abort meets bytes the pipe holds for the kernel. With 16 MiB the kernel is
    /// full (bytes are left unsent, which the abort must report); with 16 KiB the kernel took everything and the
    /// output is waiting for the application's next flush.
    /// </summary>
    [Theory]
    [InlineData(16 * 1024 * 1024, true)]
    [InlineData(16 * 1024, false)]
    public async Task Abort_with_zero_copy_sends_in_flight_releases_the_output_and_reports_what_was_not_sent(int size, bool unsent)
    {
        var abortNow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var flushEnded = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        IEpollConnectionFeature? epoll = null;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            epoll = connection.Features.Get<IEpollConnectionFeature>();
            ValueTask<FlushResult> flush = connection.Transport.Output.WriteAsync(new byte[size]);
            await abortNow.Task;
            connection.Abort(new ConnectionAbortedException("The test aborts mid-send."));
            try
            {
                // Once the transport lets go of the output (after the grace period for the kernel's pages), the
                // application's flushes say the output is completed: it stops writing.
                FlushResult result = await flush.AsTask().WaitAsync(Timeouts.Default);
                var waited = System.Diagnostics.Stopwatch.StartNew();
                while (!result.IsCompleted && waited.Elapsed < Timeouts.Default)
                {
                    result = await connection.Transport.Output.WriteAsync(new byte[1]).AsTask().WaitAsync(Timeouts.Default);
                }

                flushEnded.TrySetResult(result.IsCompleted);
            }
            catch (TimeoutException)
            {
                flushEnded.TrySetResult(false);
            }
        }, o => o.ZeroCopyThreshold = 16 * 1024, output);

        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
            Assert.True(await Poll.UntilAsync(() => socket.Available > 0), "The first send never arrived.");
            abortNow.SetResult();
            Assert.True(await flushEnded.Task.WithTimeout(Timeouts.Bulk), "The output was never completed after the abort.");
            Assert.Equal(EpollCloseReason.Aborted, epoll!.CloseReason);
        });

        output.WriteLine(string.Join(", ", metrics.Where(kv => kv.Key.StartsWith("epoll.zerocopy", StringComparison.Ordinal) || kv.Key.StartsWith("epoll.syscalls", StringComparison.Ordinal)).Select(kv => $"{kv.Key}={kv.Value}")));
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") >= 1, "No zero-copy send was made.");
        Assert.Equal(unsent, server.Logs.Entries.Any(e => e.Message.Contains("bytes of output not sent", StringComparison.Ordinal)));
        Assert.DoesNotContain(server.Logs.Entries, e => e.IsFailure);
    }

    [Fact]
    public async Task A_peer_that_never_reads_holds_zero_copy_output_within_MaxWriteBufferSize()
    {
        // A zero-copy send's bytes stay in the pipe until the kernel completes it, which it never does while the peer
        // does not read. They must not escape the write limit: the application is held at a bounded amount.
        const int chunk = 64 * 1024;
        long accepted = 0;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            byte[] data = new byte[chunk];
            while (!(await connection.Transport.Output.WriteAsync(data)).IsCompleted)
            {
                Interlocked.Add(ref accepted, chunk);
            }
        }, o =>
        {
            o.ZeroCopyThreshold = 16 * 1024;
            o.MaxWriteBufferSize = chunk;
        }, output);

        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
            long held = await Poll.UntilStableAsync(() => Interlocked.Read(ref accepted), TimeSpan.FromSeconds(1));
            output.WriteLine($"the application wrote {held} bytes before it was held");

            // Sent and held for the kernel (one limit's worth), and not sent yet (the pipe's own limit), and the
            // write that crossed it.
            Assert.InRange(held, chunk, 3 * chunk);
            socket.Reset();
        });
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") >= 1, "No zero-copy send was made.");
    }

    [Fact]
    public async Task Off_by_default()
    {
        var reasons = new List<EpollCloseReason>();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, Sender(4 * 1024 * 1024, 6, reasons), output: output);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            socket.Shutdown(SocketShutdown.Send);
            Assert.Equal(Client.Sha256(Client.RandomBytes(4 * 1024 * 1024, 6)), Client.Sha256(await socket.ReceiveToEndAsync(timeout: Timeouts.Bulk)));
        });
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.zerocopy.sends"));
    }

    [Fact]
    public async Task Completions_out_of_order_release_everything_and_the_close_stays_graceful()
    {
        // The seam hands each batch of completions over newest first, one send at a time, as a real network may.
        await using var sample = await SampleProcess.StartAsync("zerocopy_reorder=1", output, ["--Kestrel:Transport:Epoll:ZeroCopyThreshold=8192", "--Kestrel:Transport:Epoll:MaxWriteBufferSize=1048576"]);
        var elapsed = System.Diagnostics.Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(async i =>
        {
            using var socket = await Client.ConnectAsync(sample.EchoEndPoint);
            byte[] data = Client.RandomBytes(8 * 1024 * 1024, seed: 200 + i);
            var receive = socket.ReceiveToEndAsync(maxBytes: data.Length, timeout: Timeouts.Bulk);
            await socket.SendAllAsync(data, Timeouts.Bulk);
            socket.Shutdown(SocketShutdown.Send);

            // Every byte back, then the server's FIN: a close that waited out its completions would end in a reset.
            Assert.Equal(Client.Sha256(data), Client.Sha256(await receive));
        })).WithTimeout(Timeouts.Bulk);
        output.WriteLine($"echoed in {elapsed.ElapsedMilliseconds} ms");

        using var client = HttpClients.Create(sample.BaseAddress);
        using var stats = JsonDocument.Parse(await client.GetStringAsync("/stats"));
        output.WriteLine(stats.RootElement.ToString());
        Assert.False(sample.HasExited, sample.Tail());
        Assert.DoesNotContain(sample.Lines, l => l.Contains("zero-copy sends the kernel had not completed", StringComparison.Ordinal));
        Assert.DoesNotContain(sample.Lines, l => l.StartsWith("fail", StringComparison.Ordinal) || l.StartsWith("crit", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ENOBUFS_turns_zero_copy_off_and_the_send_goes_out_copied()
    {
        // The seam fails zero-copy sends with ENOBUFS (the optmem limit), in the sample as a child process.
        // The transport's debug log says when a connection turns zero-copy off, and why.
        await using var sample = await SampleProcess.StartAsync("seed=3;zerocopy_enobufs=0.7", output, ["--Kestrel:Transport:Epoll:ZeroCopyThreshold=8192", "--Kestrel:Transport:Epoll:MaxWriteBufferSize=1048576", "--Logging:LogLevel:Transport.Epoll=Debug"]);
        await Task.WhenAll(Enumerable.Range(0, 12).Select(async i =>
        {
            using var socket = await Client.ConnectAsync(sample.EchoEndPoint);
            byte[] data = Client.RandomBytes(3 * 1024 * 1024, seed: 100 + i);
            var receive = socket.ReceiveExactlyAsync(data.Length, Timeouts.Bulk);
            await socket.SendAllAsync(data, Timeouts.Bulk);
            Assert.Equal(Client.Sha256(data), Client.Sha256(await receive));
        })).WithTimeout(Timeouts.Bulk);

        // Every byte came back (above), though sends failed with ENOBUFS: they went out copied, and the connections
        // that met it turned zero-copy off.
        Assert.False(sample.HasExited, sample.Tail());
        Assert.Contains(sample.Lines, l => l.Contains("zero-copy sends turned off (ENOBUFS)", StringComparison.Ordinal));
        Assert.DoesNotContain(sample.Lines, l => l.StartsWith("fail:", StringComparison.Ordinal) || l.StartsWith("crit:", StringComparison.Ordinal));
    }
}

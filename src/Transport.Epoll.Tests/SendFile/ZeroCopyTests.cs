using System.Net.Sockets;
using System.Text.Json;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Transport.Epoll.Tests.Reliability;
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
                using var socket = await Client.ConnectAsync(server.EndPoint);
                socket.Shutdown(SocketShutdown.Send);
                Assert.Equal(expected, Client.Sha256(await socket.ReceiveToEndAsync(maxBytes: size, timeout: Timeouts.Bulk)));
            })).WithTimeout(Timeouts.Bulk);
            Assert.True(await Poll.UntilAsync(() => { lock (reasons) { return reasons.Count == connections; } }));
        });

        output.WriteLine($"zero-copy sends {metrics.GetValueOrDefault("epoll.zerocopy.sends")}, completions {metrics.GetValueOrDefault("epoll.zerocopy.completions")}, copied {metrics.GetValueOrDefault("epoll.zerocopy.copied")}, writes {metrics.GetValueOrDefault("epoll.syscalls.write")}");
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") >= connections, "Not every connection sent zero-copy.");
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.completions") >= connections);

        // Loopback copies: every connection was told so and went back to plain sends for the rest.
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.copied") >= connections);
        Assert.True(metrics.GetValueOrDefault("epoll.zerocopy.sends") < metrics.GetValueOrDefault("epoll.syscalls.write"));

        // Every close waited for its completions: graceful (the clients had sent their FIN first), none reset.
        Assert.All(reasons, r => Assert.Contains(r, new[] { EpollCloseReason.PeerClosed, EpollCloseReason.LocalClose }));
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
    public async Task ENOBUFS_turns_zero_copy_off_and_the_send_goes_out_copied()
    {
        // The seam fails zero-copy sends with ENOBUFS (the optmem limit), in the sample as a child process.
        await using var sample = await SampleProcess.StartAsync("seed=3;zerocopy_enobufs=0.7", output, ["--Kestrel:Transport:Epoll:ZeroCopyThreshold=8192", "--Kestrel:Transport:Epoll:MaxWriteBufferSize=1048576"]);
        await Task.WhenAll(Enumerable.Range(0, 12).Select(async i =>
        {
            using var socket = await Client.ConnectAsync(sample.EchoEndPoint);
            byte[] data = Client.RandomBytes(3 * 1024 * 1024, seed: 100 + i);
            var receive = socket.ReceiveExactlyAsync(data.Length, Timeouts.Bulk);
            await socket.SendAllAsync(data, Timeouts.Bulk);
            Assert.Equal(Client.Sha256(data), Client.Sha256(await receive));
        })).WithTimeout(Timeouts.Bulk);

        using var client = HttpClients.Create(sample.BaseAddress);
        using var stats = JsonDocument.Parse(await client.GetStringAsync("/stats"));
        string text = stats.RootElement.ToString();
        output.WriteLine(text);
        Assert.Contains("epoll.zerocopy.sends", text);
        Assert.False(sample.HasExited, sample.Tail());
        Assert.DoesNotContain(sample.Lines, l => l.Contains("fail", StringComparison.OrdinalIgnoreCase) && l.Contains("Transport.Epoll", StringComparison.Ordinal));
    }
}

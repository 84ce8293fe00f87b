using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>The <see cref="EpollTransport.MeterName"/> meter, as dotnet-counters sees it: a MeterListener on one server's meter.</summary>
public sealed class MetricsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_meter_counts_connections_by_close_reason_bytes_and_syscalls()
    {
        const int PeerClosing = 3;
        const int ServerClosing = 2;
        byte[] message = Client.RandomBytes(10_000, seed: 10);

        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            // A connection that says "bye" is closed by the server after its echo; the others echo until the peer's FIN.
            var input = connection.Transport.Input;
            var writer = connection.Transport.Output;
            long seen = 0;
            while (true)
            {
                var result = await input.ReadAsync();
                foreach (var segment in result.Buffer)
                {
                    writer.Write(segment.Span);
                    seen += segment.Length;
                }

                input.AdvanceTo(result.Buffer.End);
                await writer.FlushAsync();
                if (result.IsCompleted || seen == message.Length + 3)
                {
                    break;
                }
            }

            await input.CompleteAsync();
            await writer.CompleteAsync();
        }, output: output);

        // Only this server's instruments: each host's IMeterFactory scopes its meters.
        object? scope = server.App.Services.GetService<IMeterFactory>();
        var sums = new ConcurrentDictionary<string, long>();
        var last = new ConcurrentDictionary<string, long>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == EpollTransport.MeterName && (scope is null || instrument.Meter.Scope == scope))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string key = instrument.Name;
            foreach (var tag in tags)
            {
                key += $"[{tag.Key}={tag.Value}]";
            }

            sums.AddOrUpdate(key, value, (_, sum) => sum + value);
            last[key] = value;
        });
        listener.SetMeasurementEventCallback<int>((instrument, value, _, _) => sums.AddOrUpdate(instrument.Name, 1, (_, n) => n + 1));
        listener.Start();

        // Peer-closing connections: send, read the echo, half-close, read EOF.
        for (int i = 0; i < PeerClosing; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync(message);
            Assert.Equal(message, await socket.ReceiveExactlyAsync(message.Length));
            socket.Shutdown(SocketShutdown.Send);
            Assert.Empty(await socket.ReceiveToEndAsync());
        }

        // Server-closing connections: the handler completes its output after the full message plus "bye".
        for (int i = 0; i < ServerClosing; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync(message.Concat("bye"u8.ToArray()).ToArray());
            Assert.Equal(message.Length + 3, (await socket.ReceiveToEndAsync()).Length);
        }

        const int Total = PeerClosing + ServerClosing;
        long Sum(string key) => sums.TryGetValue(key, out long v) ? v : 0;

        // Close counts are recorded on the loop as each fd closes: wait for them.
        Assert.True(
            await Poll.UntilAsync(() => Sum("epoll.connections.closed[reason=PeerClosed][direction=inbound]") + Sum("epoll.connections.closed[reason=LocalClose][direction=inbound]") >= Total),
            "Closed connections not counted: " + Dump(sums));
        listener.RecordObservableInstruments();
        output.WriteLine(Dump(sums));

        Assert.Equal(Total, Sum("epoll.connections.accepted"));
        Assert.Equal(PeerClosing, Sum("epoll.connections.closed[reason=PeerClosed][direction=inbound]"));
        Assert.Equal(ServerClosing, Sum("epoll.connections.closed[reason=LocalClose][direction=inbound]"));
        Assert.Equal(0, Sum("epoll.connections.active[direction=inbound]"));
        Assert.Equal(0, Sum("epoll.connections.connected"));

        long expectedBytes = (Total * (long)message.Length) + (ServerClosing * 3);
        Assert.Equal(expectedBytes, last.GetValueOrDefault("epoll.bytes.received"));
        Assert.Equal(expectedBytes, last.GetValueOrDefault("epoll.bytes.sent"));
        // At least one read per connection (a read takes up to 16 KiB, so the message and the FIN may come in one).
        Assert.True(last.GetValueOrDefault("epoll.syscalls.read") >= Total, "reads: " + Dump(sums));
        Assert.True(last.GetValueOrDefault("epoll.syscalls.write") >= Total, "writes: " + Dump(sums));
        Assert.True(last.GetValueOrDefault("epoll.syscalls.epoll_wait") > 0, "epoll_wait: " + Dump(sums));
        Assert.True(last.GetValueOrDefault("epoll.events") >= Total, "events: " + Dump(sums));
        Assert.True(last.ContainsKey("epoll.eagain"), "epoll.eagain not reported: " + Dump(sums));
        Assert.True(last.ContainsKey("epoll.writes.partial"), "epoll.writes.partial not reported: " + Dump(sums));
        Assert.True(last.ContainsKey("epoll.connections.table"), "epoll.connections.table not reported: " + Dump(sums));
        Assert.True(Sum("epoll.loop.events_per_wakeup") > 0, "events_per_wakeup not recorded: " + Dump(sums));
    }

    private static string Dump(ConcurrentDictionary<string, long> values) =>
        string.Join(", ", values.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key}={p.Value}"));
}

using System.Diagnostics;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// sendfile(2) blocks its caller while it reads pages that are not in the page cache, whatever the socket's
/// O_NONBLOCK says. A file that is not cached is sent from a worker thread, so the loop keeps serving its others.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class ColdFileTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    [Fact]
    public async Task A_cold_file_does_not_stall_the_other_connections_of_its_loop()
    {
        const long size = 96L * 1024 * 1024;
        string path = files.Create(size, "cold.bin");
        using (var handle = File.OpenHandle(path))
        {
            // Written pages must reach the disk before they can be dropped from the cache.
            using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
            {
                stream.Flush(flushToDisk: true);
            }

            Assert.Equal(0, Libc.EvictFromPageCache((int)handle.DangerousGetHandle()));
            if (Libc.TryCountCachedPages((int)handle.DangerousGetHandle(), 0, size, out long cached, out long total))
            {
                output.WriteLine($"cached before the download: {cached} of {total} pages");
                Assert.True(cached < total / 2, $"The file stayed in the page cache ({cached} of {total} pages).");
            }
        }

        // One loop: the download and the echo share it.
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, ServeAsync, epoll: o => o.ThreadCount = 1, output: output);
        using var download = await Client.ConnectAsync(server.EndPoint);
        using var echo = await Client.ConnectAsync(server.EndPoint);
        await echo.SendAllAsync("echo\n");
        Assert.Equal("ok", Encoding.ASCII.GetString(await echo.ReceiveExactlyAsync(2)));

        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            await download.SendAllAsync($"{path} 0 {size}\n");
            var receiving = Task.Run(async () =>
            {
                var buffer = new byte[256 * 1024];
                long received = 0;
                long expected = FileProtocol.Begin.Length + size + FileProtocol.End.Length;
                while (received < expected)
                {
                    int n = await download.ReceiveOnceAsync(buffer, Timeouts.Bulk);
                    Assert.NotEqual(0, n);
                    received += n;
                }

                return received;
            });

            // Ping-pong on the other connection for as long as the file goes out.
            var latencies = new List<double>();
            var clock = new Stopwatch();
            var one = new byte[1];
            while (!receiving.IsCompleted)
            {
                clock.Restart();
                await echo.SendAllAsync("x");
                Assert.Equal(1, await echo.ReceiveOnceAsync(one));
                latencies.Add(clock.Elapsed.TotalMilliseconds);
            }

            Assert.Equal(FileProtocol.Begin.Length + size + FileProtocol.End.Length, await receiving.WithTimeout(Timeouts.Bulk));
            latencies.Sort();
            double max = latencies[^1];
            double p99 = latencies[(int)(latencies.Count * 0.99)];
            output.WriteLine($"echo round trips during the cold download: {latencies.Count}, p50 {latencies[latencies.Count / 2]:0.###} ms, p99 {p99:0.###} ms, max {max:0.###} ms");
            Assert.True(latencies.Count >= 10, $"Only {latencies.Count} echo round trips while the file went out.");
            Assert.True(p99 < 100, $"Echo p99 was {p99:0.#} ms while a cold file went out on the same loop.");
        });
        output.WriteLine($"slices sent from a worker: {metrics.GetValueOrDefault("epoll.sendfile.offloads")}");
        Assert.True(metrics.GetValueOrDefault("epoll.sendfile.offloads") > 0, "No slice of the cold file was sent from a worker.");
        Assert.Equal(size, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    /// <summary>"echo\n" makes the connection an echo; any other line is the file protocol.</summary>
    private static async Task ServeAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        ReadResult first = await input.ReadAtLeastAsync(5);
        if (first.Buffer.Length >= 5 && Encoding.ASCII.GetString(System.Buffers.BuffersExtensions.ToArray(first.Buffer.Slice(0, 5))) == "echo\n")
        {
            input.AdvanceTo(first.Buffer.GetPosition(5));
            await connection.Transport.Output.WriteAsync("ok"u8.ToArray());
            await Handlers.EchoAsync(connection);
            return;
        }

        input.AdvanceTo(first.Buffer.Start);
        await FileProtocol.ServeAsync(connection, async (c, path, offset, count) =>
        {
            using var file = File.OpenHandle(path);
            await c.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, offset, count);
        });
    }
}

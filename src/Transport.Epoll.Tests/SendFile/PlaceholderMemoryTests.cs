using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// An HTTP response's file goes out with sendfile(2) while Kestrel's writer counts placeholder bytes for it. Those
/// bytes are skipped, never sent, so they must cost what any write of the copy path costs: pool blocks, bounded by
/// MaxWriteBufferSize, and no memory allocated in proportion to the file.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class PlaceholderMemoryTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    [Fact]
    public async Task Downloading_a_large_file_through_sendfile_allocates_a_small_fraction_of_its_size()
    {
        const long size = 128L * 1024 * 1024;
        string path = files.Create(size, "placeholders.bin");
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/file", () => Results.File(path, "application/octet-stream"));
            },
        });

        using var client = await Client.ConnectAsync(server.EndPoint);
        var buffer = new byte[256 * 1024];

        // The first download pays for what runs once (JIT, pools); the second is measured.
        await DownloadAsync(client, buffer, size);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var metrics = await TransportMetrics.CollectAsync(server, () => DownloadAsync(client, buffer, size));
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;

        output.WriteLine($"allocated while a {size / (1024 * 1024)} MiB file went out: {allocated / 1024} KiB");
        Assert.True(metrics.GetValueOrDefault("epoll.sendfile.bytes") >= size, "The file did not go out with sendfile.");
        Assert.True(allocated < size / 32, $"{allocated / (1024 * 1024)} MiB allocated to send a {size / (1024 * 1024)} MiB file with sendfile.");
    }

    [Fact]
    public async Task Clients_that_never_read_a_file_cost_no_memory_in_proportion_to_it()
    {
        const int clients = 40;
        const long size = 10L * 1024 * 1024;
        string path = files.Create(size, "stalled.bin");
        int started = 0;
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/file", () =>
                {
                    Interlocked.Increment(ref started);
                    return Results.File(path, "application/octet-stream");
                });
            },
        });

        // Warm: one download read to the end pays for what runs once.
        using (var warm = await Client.ConnectAsync(server.EndPoint))
        {
            await DownloadAsync(warm, new byte[256 * 1024], size);
        }

        started = 0;
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var stalled = new List<Socket>();
        try
        {
            for (int i = 0; i < clients; i++)
            {
                var client = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
                stalled.Add(client);
                await client.SendAllAsync("GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
            }

            Assert.True(await Poll.UntilAsync(() => Volatile.Read(ref started) == clients), $"{started} of {clients} requests reached the application.");

            // Each response writes what it can and then waits for its reader: the allocations stop.
            long allocated = await Poll.UntilStableAsync(() => GC.GetTotalAllocatedBytes(precise: false), TimeSpan.FromMilliseconds(500)) - before;
            output.WriteLine($"allocated for {clients} responses of {size / (1024 * 1024)} MiB nobody reads: {allocated / 1024} KiB ({allocated / clients / 1024} KiB each)");
            Assert.True(allocated < clients * 192L * 1024, $"{allocated / clients / 1024} KiB allocated per response nobody reads.");
        }
        finally
        {
            foreach (var client in stalled)
            {
                client.Reset();
            }
        }
    }

    private static async Task DownloadAsync(Socket client, byte[] buffer, long size)
    {
        await client.SendAllAsync("GET /file HTTP/1.1\r\nHost: x\r\n\r\n");

        // Headers, then exactly Content-Length bytes (keep-alive: the connection stays open).
        long bodyLeft = -1;
        int headerBytes = 0;
        var head = new StringBuilder();
        while (bodyLeft != 0)
        {
            int n = await client.ReceiveOnceAsync(buffer, Timeouts.Bulk);
            Assert.NotEqual(0, n);
            if (bodyLeft < 0)
            {
                head.Append(Encoding.ASCII.GetString(buffer, 0, n));
                string text = head.ToString();
                int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
                if (end < 0)
                {
                    continue;
                }

                Assert.StartsWith("HTTP/1.1 200", text, StringComparison.Ordinal);
                Assert.Contains($"Content-Length: {size}", text, StringComparison.Ordinal);
                headerBytes = end + 4;
                bodyLeft = size - (text.Length - headerBytes);
            }
            else
            {
                bodyLeft -= n;
            }

            Assert.True(bodyLeft >= 0, "More bytes than Content-Length.");
        }
    }
}

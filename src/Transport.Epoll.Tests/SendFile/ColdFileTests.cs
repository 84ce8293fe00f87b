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
        MakeCold(path);
        string kernel = DescribeKernel(path);

        // One loop: the download and the echo share it.
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, ServeAsync, epoll: o => o.ThreadCount = 1, output: output);
        using var download = await Client.ConnectAsync(server.EndPoint);
        using var echo = await Client.ConnectAsync(server.EndPoint);
        await echo.SendAllAsync("echo\n");
        Assert.Equal("ok", Encoding.ASCII.GetString(await echo.ReceiveExactlyAsync(2)));

        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            // Counted, not hashed: hashing 96 MiB would compete with the echo for this machine's CPU.
            var receiving = DownloadAsync(download, path, size, checkBytes: false);

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

            await receiving.WithTimeout(Timeouts.Bulk);
            latencies.Sort();
            double max = latencies[^1];
            double p99 = latencies[(int)(latencies.Count * 0.99)];
            output.WriteLine($"echo round trips during the cold download: {latencies.Count}, p50 {latencies[latencies.Count / 2]:0.###} ms, p99 {p99:0.###} ms, max {max:0.###} ms");
            Assert.True(latencies.Count >= 10, $"{kernel}: only {latencies.Count} echo round trips while the file went out.");
            Assert.True(p99 < 100, $"{kernel}: echo p99 was {p99:0.#} ms while a cold file went out on the same loop.");
        });
        output.WriteLine($"{kernel}; slices sent from a worker: {metrics.GetValueOrDefault("epoll.sendfile.offloads")}");
        Assert.True(metrics.GetValueOrDefault("epoll.sendfile.offloads") > 0, $"{kernel}: no slice of the cold file was sent from a worker.");
        Assert.Equal(size, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    /// <summary>
    /// The other half of the decision the cold-file test relies on: where cachestat(2) answers, a file wholly in the
    /// page cache goes out from the loop, no worker involved; where it does not, the transport cannot tell, and every
    /// slice goes to a worker. Either way the assertion names the path that ran.
    /// </summary>
    [Fact]
    public async Task A_file_in_the_page_cache_is_sent_from_the_loop_where_cachestat_answers_and_from_workers_where_it_does_not()
    {
        const long size = 8L * 1024 * 1024;
        string path = files.Create(size, "hot.bin");
        PageCache.Warm(path);
        var (resident, total) = PageCache.Count(path);
        Assert.True(resident == total, $"The file is not wholly in the page cache after reading it ({resident} of {total} pages, mincore).");
        bool cacheStat = PageCache.CacheStatAnswers(path);
        string kernel = DescribeKernel(path);

        await using var server = await TestServer.StartRawAsync(Transports.Epoll, ServeAsync, epoll: o => o.ThreadCount = 1, output: output);
        using var download = await Client.ConnectAsync(server.EndPoint);
        var metrics = await TransportMetrics.CollectAsync(server, () => DownloadAsync(download, path, size, checkBytes: true));

        long offloads = metrics.GetValueOrDefault("epoll.sendfile.offloads");
        output.WriteLine($"{kernel}; slices sent from a worker: {offloads}");
        Assert.Equal(size, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        if (cacheStat)
        {
            // With the file's residency after the download: if the kernel dropped some of its pages meanwhile, the message says so.
            var (residentAfter, totalAfter) = PageCache.Count(path);
            Assert.True(offloads == 0, $"{kernel}: {offloads} slices of a file wholly in the page cache went to a worker ({residentAfter} of {totalAfter} pages resident after the download, mincore).");
        }
        else
        {
            Assert.True(offloads > 0, $"{kernel}: a file went out from the loop although the transport cannot tell whether it is cached.");
        }
    }

    /// <summary>Drops the file from the page cache and checks with mincore(2) that it is gone (on every kernel).</summary>
    private void MakeCold(string path)
    {
        // Written pages must reach the disk before they can be dropped from the cache.
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Flush(flushToDisk: true);
        }

        using (var handle = File.OpenHandle(path))
        {
            Assert.Equal(0, Libc.EvictFromPageCache((int)handle.DangerousGetHandle()));
        }

        var (resident, total) = PageCache.Count(path);
        output.WriteLine($"in the page cache before the download: {resident} of {total} pages (mincore)");
        Assert.True(resident < total / 2, $"The file stayed in the page cache ({resident} of {total} pages, mincore): the test cannot make it cold here.");
    }

    /// <summary>Which of the transport's two paths this kernel takes, for the output and every assertion's message.</summary>
    private static string DescribeKernel(string path) =>
        $"kernel {Environment.OSVersion.Version}, " + (PageCache.CacheStatAnswers(path)
            ? "cachestat(2) answers (slices found cached are sent from the loop, the others from a worker)"
            : "cachestat(2) does not answer (every slice is sent from a worker)");

    /// <summary>Asks for the whole file and reads the response (the protocol's markers around the file's bytes), checking the file's bytes when asked.</summary>
    private static Task DownloadAsync(System.Net.Sockets.Socket socket, string path, long size, bool checkBytes) => Task.Run(async () =>
    {
        await socket.SendAllAsync($"{path} 0 {size}\n");
        var buffer = new byte[256 * 1024];
        long expected = FileProtocol.Begin.Length + size + FileProtocol.End.Length;
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        long received = 0;
        while (received < expected)
        {
            int n = await socket.ReceiveOnceAsync(buffer, Timeouts.Bulk);
            Assert.NotEqual(0, n);

            // The part of this read that is the file's, between the markers.
            long from = Math.Max(received, FileProtocol.Begin.Length), to = Math.Min(received + n, FileProtocol.Begin.Length + size);
            if (checkBytes && to > from)
            {
                sha.AppendData(buffer, (int)(from - received), (int)(to - from));
            }

            received += n;
        }

        Assert.Equal(expected, received);
        if (checkBytes)
        {
            Assert.Equal(TestFiles.Hash(path, 0, size), Convert.ToHexString(sha.GetHashAndReset()));
        }
    });

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

using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>A 1 GiB file, byte-identical over a raw handler, plain HTTP/1.1 (sendfile), TLS and HTTP/2 (copies).</summary>
[Collection(SerialCollection.Name)]
public sealed class LargeFileTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    private const long Size = 1L << 30;

    private string CreateGiB()
    {
        string path = Path.Combine(files.Folder, "gib.bin");
        if (!File.Exists(path))
        {
            // 1024 different blocks of 1 MiB: cheap to write, and a block out of place changes the hash.
            byte[] block = Client.RandomBytes(1024 * 1024, seed: 9);
            using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
            for (int i = 0; i < 1024; i++)
            {
                BitConverter.TryWriteBytes(block, i);
                stream.Write(block);
            }
        }

        return path;
    }

    private static async Task<string> HashStreamAsync(Stream stream, long expected)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1024 * 1024];
        long total = 0;
        int n;
        using var cts = Timeouts.Cts(TimeSpan.FromSeconds(90));
        while ((n = await stream.ReadAsync(buffer, cts.Token)) > 0)
        {
            sha.AppendData(buffer, 0, n);
            total += n;
        }

        Assert.Equal(expected, total);
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    [Fact]
    public async Task One_GiB_is_byte_identical_over_raw_HTTP1_TLS_and_HTTP2()
    {
        string path = CreateGiB();
        string expected = TestFiles.Hash(path, 0, Size);
        await using var plain = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/gib", () => Results.File(path, "application/octet-stream"));
            },
        });
        await using var tls = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureListen = l => l.UseHttps(TestCertificate.Instance),
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/gib", () => Results.File(path, "application/octet-stream"));
            },
        });
        await using var h2 = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureListen = l => l.Protocols = HttpProtocols.Http2,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/gib", () => Results.File(path, "application/octet-stream"));
            },
        });
        await using var raw = await TestServer.StartRawAsync(Transports.Epoll, c => FileProtocol.ServeAsync(c), output: output);

        foreach (var (server, version) in new[] { (plain, HttpVersion.Version11), (tls, HttpVersion.Version11), (h2, HttpVersion.Version20) })
        {
            using var client = HttpClients.Create(server == tls ? tls.Address("https") : server.BaseAddress, version);
            client.Timeout = TimeSpan.FromSeconds(90);
            using var response = await client.GetAsync("/gib", HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(expected, await HashStreamAsync(await response.Content.ReadAsStreamAsync(), Size));
        }

        using var socket = await Client.ConnectAsync(raw.EndPoint);
        await socket.SendAllAsync($"{path} 0 {Size}\n");
        byte[] begin = await socket.ReceiveExactlyAsync(FileProtocol.Begin.Length);
        Assert.Equal("BEGIN\n", Encoding.ASCII.GetString(begin));
        socket.Shutdown(SocketShutdown.Send);
        string rawHash;
        using (var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            var buffer = new byte[1024 * 1024];
            long left = Size;
            using var cts = Timeouts.Cts(TimeSpan.FromSeconds(90));
            while (left > 0)
            {
                int n = await socket.ReceiveAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), SocketFlags.None, cts.Token);
                Assert.NotEqual(0, n);
                sha.AppendData(buffer, 0, n);
                left -= n;
            }

            rawHash = Convert.ToHexString(sha.GetHashAndReset());
        }

        Assert.Equal(expected, rawHash);
        Assert.Equal("END\n", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(FileProtocol.End.Length)));
    }
}

using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.StaticFiles;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// HTTP responses through UseEpollSendFile: the same bytes as Kestrel's copy, with Content-Length and keep-alive
/// intact, and the fast path taken exactly when it is safe (the metrics tell which path carried the bytes).
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class HttpSendFileTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    private Task<TestServer> StartAsync(Action<ListenOptions>? listen = null, Action<WebApplication>? before = null, Action<WebApplicationBuilder>? builder = null, Action<EpollTransportOptions>? epoll = null)
        => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureListen = listen,
            ConfigureBuilder = builder,
            Epoll = epoll,
            Output = output,
            ConfigureApp = app =>
            {
                before?.Invoke(app);
                app.UseEpollSendFile();
                app.UseStaticFiles(new StaticFileOptions
                {
                    FileProvider = new PhysicalFileProvider(files.Folder),
                    RequestPath = "/static",
                    ServeUnknownFileTypes = true,
                });
                app.MapGet("/result/{name}", (string name) => Results.File(Path.Combine(files.Folder, name), "application/octet-stream", enableRangeProcessing: true));
                app.MapGet("/send/{name}", async (HttpContext context, string name, long? offset, long? count) =>
                {
                    context.Response.Headers.ContentType = "application/octet-stream";
                    await context.Response.SendFileAsync(Path.Combine(files.Folder, name), offset ?? 0, count, context.RequestAborted);
                });
                app.MapGet("/chunked/{name}", async (HttpContext context, string name) =>
                {
                    // Started without a Content-Length: chunked framing, which placeholders cannot take.
                    await context.Response.WriteAsync("prefix:", context.RequestAborted);
                    await context.Response.SendFileAsync(Path.Combine(files.Folder, name), 0, null, context.RequestAborted);
                });
            },
        });

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(4097)]
    [InlineData(1_048_577)]
    [InlineData(20_000_000)]
    public async Task Results_File_static_files_and_SendFileAsync_send_identical_bytes_through_sendfile(long size)
    {
        string path = files.Create(size);
        string name = Path.GetFileName(path);
        string expected = TestFiles.Hash(path, 0, size);
        await using var server = await StartAsync();
        using var client = HttpClients.Create(server.BaseAddress);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            foreach (string url in new[] { $"/result/{name}", $"/static/{name}", $"/send/{name}" })
            {
                using var response = await client.GetAsync(url);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                byte[] body = await response.Content.ReadAsByteArrayAsync();
                Assert.Equal(expected, Client.Sha256(body));
                if (url.StartsWith("/send", StringComparison.Ordinal))
                {
                    // Set by the transport's feature, since the endpoint did not set it.
                    Assert.NotEqual(true, response.Headers.TransferEncodingChunked);
                    Assert.Equal(size, response.Content.Headers.ContentLength);
                }
            }
        });
        Assert.Equal(3 * size, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.fallback_bytes"));
    }

    [Fact]
    public async Task Range_requests_get_exactly_their_range()
    {
        string path = files.Create(3_000_000);
        string name = Path.GetFileName(path);
        await using var server = await StartAsync();
        using var client = HttpClients.Create(server.BaseAddress);
        foreach (var (from, to) in new (long, long?)[] { (0, 0), (1, 1), (100, 4195), (2_999_999, null), (1_000_000, 2_500_000), (0, 2_999_999) })
        {
            foreach (string url in new[] { $"/result/{name}", $"/static/{name}" })
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, url);
                request.Headers.Range = new RangeHeaderValue(from, to);
                using var response = await client.SendAsync(request);
                Assert.Equal(HttpStatusCode.PartialContent, response.StatusCode);
                long last = to ?? 2_999_999;
                byte[] body = await response.Content.ReadAsByteArrayAsync();
                Assert.Equal(last - from + 1, body.Length);
                Assert.Equal(TestFiles.Hash(path, from, last - from + 1), Client.Sha256(body));
            }
        }
    }

    [Fact]
    public async Task Pipelined_requests_after_a_file_are_served_on_the_same_connection()
    {
        string path = files.Create(300_000);
        string name = Path.GetFileName(path);
        await using var server = await StartAsync();
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var reader = new RawHttpReader(socket, Timeouts.Bulk);

        // Three requests in one write: the second and third arrive while the first file is still going out.
        await socket.SendAllAsync(RawHttpReader.Get($"/result/{name}") + RawHttpReader.Get($"/static/{name}") + RawHttpReader.Get($"/send/{name}?offset=5&count=1000"));
        for (int i = 0; i < 2; i++)
        {
            var response = await reader.ReadResponseAsync();
            Assert.Equal(200, response.StatusCode);
            Assert.Equal("300000", response.Headers["Content-Length"]);
            Assert.Equal(TestFiles.Hash(path, 0, 300_000), Client.Sha256(response.Body));
        }

        var ranged = await reader.ReadResponseAsync();
        Assert.Equal(TestFiles.Hash(path, 5, 1000), Client.Sha256(ranged.Body));

        // Still open and serving: keep-alive survived Kestrel's Content-Length accounting.
        await socket.SendAllAsync(RawHttpReader.Get($"/send/{name}?count=10", close: true));
        var last = await reader.ReadResponseAsync();
        Assert.Equal(TestFiles.Hash(path, 0, 10), Client.Sha256(last.Body));
        Assert.DoesNotContain(server.Logs.Entries, e => e.Message.Contains("Content-Length", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public async Task HEAD_falls_back_to_Kestrel_and_sends_no_body()
    {
        string path = files.Create(50_000);
        string name = Path.GetFileName(path);
        await using var server = await StartAsync();
        using var client = HttpClients.Create(server.BaseAddress);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var head = await client.SendAsync(new HttpRequestMessage(HttpMethod.Head, $"/static/{name}"));
            Assert.Equal(HttpStatusCode.OK, head.StatusCode);
            Assert.Equal(50_000, head.Content.Headers.ContentLength);
            Assert.Empty(await head.Content.ReadAsByteArrayAsync());

            // The connection is still usable after it.
            using var get = await client.GetAsync($"/static/{name}");
            Assert.Equal(TestFiles.Hash(path, 0, 50_000), Client.Sha256(await get.Content.ReadAsByteArrayAsync()));
        });
        Assert.Equal(50_000, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    [Fact]
    public async Task Compressed_responses_fall_back_and_decompress_to_the_file()
    {
        string path = Path.Combine(files.Folder, "text.txt");
        await File.WriteAllTextAsync(path, string.Concat(Enumerable.Range(0, 20_000).Select(i => $"line {i}\n")));
        byte[] original = await File.ReadAllBytesAsync(path);
        await using var server = await StartAsync(
            builder: b => b.Services.AddResponseCompression(o => o.MimeTypes = ["text/plain", "application/octet-stream"]),
            before: app => app.UseResponseCompression());
        var handler = HttpClients.Handler();
        handler.AutomaticDecompression = DecompressionMethods.None;
        using var client = new HttpClient(handler) { BaseAddress = server.BaseAddress, Timeout = Timeouts.Bulk };
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, "/static/text.txt");
            request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("gzip"));
            using var response = await client.SendAsync(request);
            Assert.Equal("gzip", Assert.Single(response.Content.Headers.ContentEncoding));
            await using var gzip = new GZipStream(await response.Content.ReadAsStreamAsync(), CompressionMode.Decompress);
            var decompressed = new MemoryStream();
            await gzip.CopyToAsync(decompressed);
            Assert.Equal(Client.Sha256(original), Client.Sha256(decompressed.ToArray()));
        });
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    [Theory]
    [InlineData("tls")]
    [InlineData("h2c")]
    public async Task TLS_and_HTTP2_fall_back_with_identical_bytes(string protocol)
    {
        bool tls = protocol == "tls";
        await using var server = await StartAsync(listen: l =>
        {
            if (tls)
            {
                l.UseHttps(TestCertificate.Instance);
            }
            else
            {
                l.Protocols = HttpProtocols.Http2;
            }
        });
        using var client = tls ? HttpClients.Create(server.Address("https")) : HttpClients.Create(server.BaseAddress, HttpVersion.Version20);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            foreach (long size in new long[] { 0, 1, 4097, 2_500_001 })
            {
                string path = files.Create(size);
                string name = Path.GetFileName(path);
                foreach (string url in new[] { $"/result/{name}", $"/static/{name}", $"/send/{name}" })
                {
                    Assert.Equal(TestFiles.Hash(path, 0, size), Client.Sha256(await client.GetByteArrayAsync(url)));
                }
            }
        });
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    [Fact]
    public async Task A_replaced_connection_pipe_falls_back_with_identical_bytes()
    {
        string path = files.Create(1_500_000);
        string name = Path.GetFileName(path);

        // Connection logging replaces the transport's pipe with its own.
        await using var server = await StartAsync(listen: l => l.UseConnectionLogging());
        using var client = HttpClients.Create(server.BaseAddress);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
            Assert.Equal(TestFiles.Hash(path, 0, 1_500_000), Client.Sha256(await client.GetByteArrayAsync($"/send/{name}"))));
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    [Fact]
    public async Task A_response_already_started_without_Content_Length_falls_back_to_chunked_copy()
    {
        string path = files.Create(90_000);
        string name = Path.GetFileName(path);
        await using var server = await StartAsync();
        using var client = HttpClients.Create(server.BaseAddress);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            using var response = await client.GetAsync($"/chunked/{name}");
            Assert.True(response.Headers.TransferEncodingChunked);
            byte[] body = await response.Content.ReadAsByteArrayAsync();
            Assert.Equal("prefix:", System.Text.Encoding.ASCII.GetString(body, 0, 7));
            Assert.Equal(TestFiles.Hash(path, 0, 90_000), Client.Sha256(body.AsSpan(7)));
        });
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }

    [Fact]
    public async Task With_the_option_off_Kestrel_copies_the_file()
    {
        string path = files.Create(700_000);
        string name = Path.GetFileName(path);
        await using var server = await StartAsync(epoll: o => o.EnableSendFile = false);
        using var client = HttpClients.Create(server.BaseAddress);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
            Assert.Equal(TestFiles.Hash(path, 0, 700_000), Client.Sha256(await client.GetByteArrayAsync($"/static/{name}"))));
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
    }
}

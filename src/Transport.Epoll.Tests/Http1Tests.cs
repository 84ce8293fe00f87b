using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class Http1Tests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task A_GET_returns_the_response_body(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var client = HttpClients.Create(server.BaseAddress);

        using var response = await client.GetAsync("/plaintext");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version11, response.Version);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal(TestApp.Plaintext, await response.Content.ReadAsStringAsync());
    }

    [Theory, BothTransports]
    public async Task Keep_alive_serves_many_requests_on_one_connection(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var reader = new RawHttpReader(socket);

        var connectionIds = new HashSet<string>();
        for (int i = 0; i < 50; i++)
        {
            await socket.SendAllAsync(RawHttpReader.Get($"/item/{i}"));
            var response = await reader.ReadResponseAsync();
            Assert.Equal(200, response.StatusCode);
            Assert.Equal($"item {i}", response.BodyText);

            await socket.SendAllAsync(RawHttpReader.Get("/conn"));
            var conn = await reader.ReadResponseAsync();
            Assert.Equal(200, conn.StatusCode);
            connectionIds.Add(conn.BodyText.Split(';')[0]);
        }

        Assert.Single(connectionIds);
        Assert.Equal(1, server.ConnectionCount);
    }

    [Theory, BothTransports]
    public async Task Sixteen_pipelined_requests_in_one_write_get_sixteen_responses_in_order(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);

        var requests = new StringBuilder();
        for (int i = 0; i < 16; i++)
        {
            requests.Append(RawHttpReader.Get($"/item/{i}"));
        }

        // One send: all sixteen requests reach the server together.
        await socket.SendAllAsync(requests.ToString());

        var reader = new RawHttpReader(socket);
        for (int i = 0; i < 16; i++)
        {
            var response = await reader.ReadResponseAsync();
            Assert.Equal(200, response.StatusCode);
            Assert.Equal($"item {i}", response.BodyText);
        }

        Assert.Equal(1, server.ConnectionCount);
    }

    [Theory, BothTransports]
    public async Task A_large_POST_is_echoed_intact(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] body = Client.RandomBytes(8 * 1024 * 1024, seed: 8);

        // The echo streams back while the body is still arriving, so the client sends and reads at the same time
        // (HttpClient would send the whole body before reading, and the two directions' buffers would deadlock).
        var reading = new RawHttpReader(socket, Timeouts.Bulk).ReadResponseAsync();
        await socket.SendAllAsync($"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {body.Length}\r\n\r\n");
        await socket.SendAllAsync(body, Timeouts.Bulk);
        var response = await reading.WithTimeout(Timeouts.Bulk);

        Assert.Equal(200, response.StatusCode);
        Assert.Equal(body.Length, response.Body.Length);
        Assert.Equal(Client.Sha256(body), Client.Sha256(response.Body));
    }

    [Theory, BothTransports]
    public async Task A_POST_with_HttpClient_is_echoed_intact(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var client = HttpClients.Create(server.BaseAddress);

        // Small enough to fit the socket buffers while HttpClient finishes sending before it reads.
        byte[] body = Client.RandomBytes(256 * 1024, seed: 9);
        using var content = new ByteArrayContent(body);
        using var response = await client.PostAsync("/echo", content);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(Client.Sha256(body), Client.Sha256(await response.Content.ReadAsByteArrayAsync()));
    }

    [Theory, BothTransports]
    public async Task A_chunked_upload_arrives_whole(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var client = HttpClients.Create(server.BaseAddress);
        byte[] body = Client.RandomBytes(3 * 1024 * 1024 + 17, seed: 3);

        // A stream of unknown length makes HttpClient send Transfer-Encoding: chunked.
        using var content = new StreamContent(new UnknownLengthStream(body), 4096);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/hash") { Content = content };
        request.Headers.TransferEncodingChunked = true;
        using var response = await client.SendAsync(request);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal($"{body.Length}:{Client.Sha256(body)}:chunked", await response.Content.ReadAsStringAsync());
    }

    [Theory, BothTransports]
    public async Task A_raw_chunked_upload_in_many_small_writes_arrives_whole(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var socket = await Client.ConnectAsync(server.EndPoint);
        byte[] body = Client.RandomBytes(100_000, seed: 100);

        await socket.SendAllAsync("POST /hash HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (int offset = 0, size = 1; offset < body.Length; offset += size, size = Math.Min(size * 2, 8192))
        {
            int n = Math.Min(size, body.Length - offset);
            await socket.SendAllAsync($"{n:x}\r\n");
            await socket.SendAllAsync(body.AsMemory(offset, n));
            await socket.SendAllAsync("\r\n");
        }

        await socket.SendAllAsync("0\r\n\r\n");
        var response = await new RawHttpReader(socket).ReadResponseAsync();

        Assert.Equal(200, response.StatusCode);
        Assert.Equal($"{body.Length}:{Client.Sha256(body)}:chunked", response.BodyText);
    }

    /// <summary>A read-only stream that does not tell its length.</summary>
    private sealed class UnknownLengthStream(byte[] data) : Stream
    {
        private int _position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = Math.Min(count, data.Length - _position);
            Array.Copy(data, _position, buffer, offset, n);
            _position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class Http2AndTlsTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task HTTP2_with_prior_knowledge_over_cleartext_works(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, listen => listen.Protocols = HttpProtocols.Http2, output);
        using var client = HttpClients.Create(server.BaseAddress, HttpVersion.Version20);

        // Several concurrent streams on the one connection: small GETs, an echo, a large upload and a large download.
        // (HttpClient sends a non-duplex request body whole before it reads the response, so the echo stays under
        // HTTP/2's flow-control windows; the large transfers go one way each.)
        byte[] body = Client.RandomBytes(200_000, seed: 2);
        using var content = new ByteArrayContent(body);
        var echo = client.PostAsync("/echo", content);
        byte[] upload = Client.RandomBytes(3 * 1024 * 1024, seed: 3);
        using var uploadContent = new ByteArrayContent(upload);
        var hash = client.PostAsync("/hash", uploadContent);
        var download = client.GetByteArrayAsync("/bytes/4000000");
        var gets = Enumerable.Range(0, 20).Select(i => client.GetStringAsync($"/item/{i}")).ToArray();
        using var conn = await client.GetAsync("/conn");

        Assert.Equal(HttpVersion.Version20, conn.Version);
        Assert.Contains("protocol=HTTP/2;https=False", await conn.Content.ReadAsStringAsync());
        for (int i = 0; i < gets.Length; i++)
        {
            Assert.Equal($"item {i}", await gets[i]);
        }

        using var echoed = await echo;
        Assert.Equal(HttpVersion.Version20, echoed.Version);
        Assert.Equal(Client.Sha256(body), Client.Sha256(await echoed.Content.ReadAsByteArrayAsync()));
        using var hashed = await hash;
        Assert.Equal($"{upload.Length}:{Client.Sha256(upload)}:", await hashed.Content.ReadAsStringAsync());
        Assert.Equal(Client.Sha256(Client.RandomBytes(4000000, seed: 4000000)), Client.Sha256(await download));
        Assert.Equal(1, server.ConnectionCount);
    }

    [Theory, BothTransports]
    public async Task HTTP2_over_TLS_with_a_certificate_made_by_the_test_works(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, listen =>
        {
            listen.Protocols = HttpProtocols.Http1AndHttp2;
            listen.UseHttps(TestCertificate.Instance);
        }, output);
        using var client = HttpClients.Create(server.Address("https"), HttpVersion.Version20);

        using var conn = await client.GetAsync("/conn");
        byte[] upload = Client.RandomBytes(2 * 1024 * 1024, seed: 22);
        using var content = new ByteArrayContent(upload);
        using var hashed = await client.PostAsync("/hash", content);
        byte[] download = await client.GetByteArrayAsync("/bytes/3000000");

        Assert.Equal(HttpVersion.Version20, conn.Version);
        Assert.Contains("protocol=HTTP/2;https=True", await conn.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, hashed.StatusCode);
        Assert.Equal($"{upload.Length}:{Client.Sha256(upload)}:", await hashed.Content.ReadAsStringAsync());
        Assert.Equal(Client.Sha256(Client.RandomBytes(3000000, seed: 3000000)), Client.Sha256(download));
        Assert.Equal(1, server.ConnectionCount);
    }

    [Theory, BothTransports]
    public async Task HTTP1_over_TLS_works(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, listen =>
        {
            listen.Protocols = HttpProtocols.Http1;
            listen.UseHttps(TestCertificate.Instance);
        }, output);
        using var client = HttpClients.Create(server.Address("https"), HttpVersion.Version11);

        using var conn = await client.GetAsync("/conn");
        byte[] body = Client.RandomBytes(3 * 1024 * 1024, seed: 11);
        using var content = new ByteArrayContent(body);
        using var echoed = await client.PostAsync("/echo", content);

        Assert.Equal(HttpVersion.Version11, conn.Version);
        Assert.Contains("protocol=HTTP/1.1;https=True", await conn.Content.ReadAsStringAsync());
        Assert.Equal(Client.Sha256(body), Client.Sha256(await echoed.Content.ReadAsByteArrayAsync()));
    }
}

using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>
/// Real HAProxy (send-proxy and send-proxy-v2, TCP mode) in front of the sample started with --ProxyProtocol and in
/// front of an in-test raw server: a client bound to 127.0.0.2 is what the application sees, over HTTP/1.1, h2c and a
/// raw TCP port; its source port too. HAProxy itself connects from 127.0.0.1.
/// </summary>
public sealed class HaproxyTests(ITestOutputHelper output)
{
    private static readonly IPAddress ClientAddress = IPAddress.Parse("127.0.0.2");

    [Fact]
    public async Task Behind_HAProxy_the_sample_sees_the_clients_address_over_HTTP1_h2c_and_the_echo_port()
    {
        await using var sample = await SampleProcess.StartAsync(output: output, extraArgs: ["--ProxyProtocol", "true", "--Http2Port", "0", "--ProxyProtocolTrusted", "127.0.0.1"]);
        Assert.True(sample.Http2Port > 0, sample.Tail());
        await using var haproxy = await Haproxy.StartAsync(
        [
            new("http_v1", sample.HttpEndPoint, "send-proxy"),
            new("http_v2", sample.HttpEndPoint, "send-proxy-v2"),
            new("http_v2_crc", sample.HttpEndPoint, "send-proxy-v2 proxy-v2-options crc32c"),
            new("h2c_v1", new IPEndPoint(IPAddress.Loopback, sample.Http2Port), "send-proxy"),
            new("h2c_v2", new IPEndPoint(IPAddress.Loopback, sample.Http2Port), "send-proxy-v2"),
            new("echo_v1", sample.EchoEndPoint, "send-proxy"),
            new("echo_v2", sample.EchoEndPoint, "send-proxy-v2"),
        ], output);

        foreach (string name in new[] { "http_v1", "http_v2", "http_v2_crc", "h2c_v1", "h2c_v2" })
        {
            var (seen, clientEndPoint) = await GetConnectionAsync(haproxy.Frontends[name], name.StartsWith("h2c", StringComparison.Ordinal) ? HttpVersion.Version20 : HttpVersion.Version11);
            Assert.True(seen.StartsWith($"{clientEndPoint}\n", StringComparison.Ordinal), $"{name}: the client was {clientEndPoint}; /connection said {seen}");
            Assert.Contains($"proxy-protocol=v{(name.EndsWith("v1", StringComparison.Ordinal) ? 1 : 2)} Proxy", seen, StringComparison.Ordinal);
        }

        foreach (string name in new[] { "echo_v1", "echo_v2" })
        {
            using var socket = await Client.ConnectAsync(haproxy.Frontends[name], s => s.Bind(new IPEndPoint(ClientAddress, 0)));
            byte[] data = Client.RandomBytes(100_000, seed: name.Length);
            var echo = socket.ReceiveExactlyAsync(data.Length);
            await socket.SendAllAsync(data);
            Assert.Equal(Client.Sha256(data), Client.Sha256(await echo));
        }

        // Configured, never guessed: a client that talks HTTP straight to the port is refused, and one that sends a
        // header itself from an address that is not the trusted proxy is refused before it is read.
        await ProxyProtocolServer.ExpectRefusedAsync(sample.HttpEndPoint, null, Encoding.ASCII.GetBytes(RawHttpReader.Get("/connection", close: true)));

        await ProxyProtocolServer.ExpectRefusedAsync(sample.HttpEndPoint, ClientAddress, Encoding.ASCII.GetBytes("PROXY TCP4 203.0.113.9 127.0.0.1 1234 80\r\nGET /connection HTTP/1.1\r\nHost: x\r\n\r\n"));
        await sample.WaitForLineAsync("Refused a connection on");
        await sample.WaitForLineAsync("not a PROXY protocol header");
    }

    [Theory]
    [InlineData("send-proxy")]
    [InlineData("send-proxy-v2")]
    [InlineData("send-proxy-v2 proxy-v2-options crc32c")]
    public async Task Behind_HAProxy_a_raw_connection_handler_sees_the_clients_address(string proxyLine)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureListen = listen => listen.UseProxyProtocol(o => o.TrustedProxies.Add("127.0.0.1")),
            ConnectionHandler = async connection =>
            {
                var header = connection.Features.Get<IProxyProtocolFeature>();
                string line = $"{connection.RemoteEndPoint}|{connection.LocalEndPoint}|{header?.Version}|{string.Join(',', header?.Tlvs.Select(t => t.Type) ?? [])}\n";
                await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes(line));
                await Handlers.EchoAsync(connection);
            },
            Output = output,
        });
        await using var haproxy = await Haproxy.StartAsync([new("raw", server.IPEndPoint, proxyLine)], output);

        using var socket = await Client.ConnectAsync(haproxy.Frontends["raw"], s => s.Bind(new IPEndPoint(ClientAddress, 0)));
        await socket.SendAllAsync("after the header\n");
        string[] parts = (await socket.ReceiveLineAsync()).Split('|');
        Assert.Equal(socket.LocalEndPoint!.ToString(), parts[0]);
        Assert.Equal(haproxy.Frontends["raw"].ToString(), parts[1]);
        Assert.Equal(proxyLine == "send-proxy" ? "1" : "2", parts[2]);
        if (proxyLine.Contains("crc32c", StringComparison.Ordinal))
        {
            Assert.Contains("3", parts[3].Split(','));
        }

        Assert.Equal("after the header\n", await socket.ReceiveLineAsync() + "\n");
    }

    /// <summary>GET /connection through <paramref name="frontend"/> from <see cref="ClientAddress"/>, over HTTP/1.1 or
    /// h2c (prior knowledge); returns the body and the client's own endpoint.</summary>
    private static async Task<(string Body, IPEndPoint? Client)> GetConnectionAsync(IPEndPoint frontend, Version version)
    {
        IPEndPoint? clientEndPoint = null;
        using var client = new HttpClient(new SocketsHttpHandler
        {
            UseProxy = false,
            ConnectCallback = async (context, token) =>
            {
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                socket.Bind(new IPEndPoint(ClientAddress, 0));
                await socket.ConnectAsync(frontend, token);
                clientEndPoint = (IPEndPoint)socket.LocalEndPoint!;
                return new NetworkStream(socket, ownsSocket: true);
            },
        })
        {
            Timeout = Timeouts.Default,
            DefaultRequestVersion = version,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        using var response = await client.GetAsync($"http://{frontend}/connection");
        Assert.Equal(version, response.Version);
        response.EnsureSuccessStatusCode();
        return (await response.Content.ReadAsStringAsync(), clientEndPoint);
    }
}

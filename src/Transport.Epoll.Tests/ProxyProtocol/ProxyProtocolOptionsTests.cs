using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;
using static Transport.Epoll.Tests.Infrastructure.ProxyHeaders;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>The PROXY protocol in configuration and in code: bogus values fail start-up naming the option.</summary>
public sealed class ProxyProtocolOptionsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Configured_ports_require_the_header_from_the_configured_proxies()
    {
        int port = FreePort();
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [new IPEndPoint(IPAddress.Loopback, port)],
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:ProxyProtocol:TrustedProxies:0"] = "10.0.0.0/8",
                ["Kestrel:Transport:Epoll:ProxyProtocol:TrustedProxies:1"] = "127.0.0.1",
                ["Kestrel:Transport:Epoll:ProxyProtocol:HeaderTimeout"] = "00:00:05",
            }),
            Epoll = o => o.ProxyProtocol.Ports.Add(port),
            ConnectionHandler = async connection =>
            {
                byte[] line = System.Text.Encoding.ASCII.GetBytes(connection.RemoteEndPoint + "\n");
                await connection.Transport.Output.WriteAsync(line);
                await Handlers.EchoAsync(connection);
            },
            Output = output,
        });

        var options = server.App.Services.GetRequiredService<IOptions<EpollTransportOptions>>().Value;
        Assert.Equal(["10.0.0.0/8", "127.0.0.1"], options.ProxyProtocol.TrustedProxies);
        Assert.Equal(TimeSpan.FromSeconds(5), options.ProxyProtocol.HeaderTimeout);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync(V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"));
        Assert.Equal("192.0.2.1:56324\n"u8.ToArray(), await socket.ReceiveExactlyAsync(16));
    }

    [Theory]
    [InlineData("ProxyProtocol:HeaderTimeout", "soon", "Kestrel:Transport:Epoll:ProxyProtocol:HeaderTimeout is 'soon'; it must be a duration")]
    [InlineData("ProxyProtocol:HeaderTimeout", "00:00:00.001", "EpollTransportOptions.ProxyProtocol.HeaderTimeout is 00:00:00.0010000; it must be between 00:00:00.0100000 and 00:10:00")]
    [InlineData("ProxyProtocol:Ports:0", "http", "Kestrel:Transport:Epoll:ProxyProtocol:Ports:0 is 'http'; it must be a whole number")]
    [InlineData("ProxyProtocol:Ports:0", "70000", "EpollTransportOptions.ProxyProtocol.Ports[0] is 70000; it must be between 1 and 65535")]
    [InlineData("ProxyProtocol:TrustedProxies:0", "10.0.0.1/8", "EpollTransportOptions.ProxyProtocol.TrustedProxies[0] is '10.0.0.1/8'; it must be an IP address")]
    [InlineData("ProxyProtocol:TrustedProxies:0", "10", "EpollTransportOptions.ProxyProtocol.TrustedProxies[0] is '10'; it must be an IP address")]
    [InlineData("ProxyProtocol:TrustedProxies:0", "::1/129", "EpollTransportOptions.ProxyProtocol.TrustedProxies[0] is '::1/129'; it must be an IP address")]
    public async Task A_bogus_configured_value_fails_start_up_naming_the_option_and_its_range(string key, string value, string expected)
    {
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:ProxyProtocol:Ports:0"] = "8080",
                ["Kestrel:Transport:Epoll:ProxyProtocol:TrustedProxies:0"] = "127.0.0.1",
                ["Kestrel:Transport:Epoll:" + key] = value,
            }),
            ConnectionHandler = Handlers.EchoAsync,
        }));

        string messages = string.Join(" <- ", Chain(ex).Select(e => e.Message));
        output.WriteLine(messages);
        Assert.Contains(Chain(ex), e => e is OptionsValidationException);
        Assert.Contains(expected, messages, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ports_without_a_trusted_proxy_fail_start_up()
    {
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Epoll = o => o.ProxyProtocol.Ports.Add(8080),
            ConnectionHandler = Handlers.EchoAsync,
        }));

        Assert.Contains(Chain(ex), e => e.Message.Contains("EpollTransportOptions.ProxyProtocol.TrustedProxies is empty", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("not-an-address", "ProxyProtocolOptions.TrustedProxies[0] is 'not-an-address'")]
    [InlineData("", "ProxyProtocolOptions.TrustedProxies[0] is ''")]
    public void UseProxyProtocol_rejects_a_bogus_value_naming_it(string trusted, string expected)
    {
        var listen = new Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions();
        ArgumentException? error = null;
        listen.Listen(IPAddress.Loopback, 0, l => error = Assert.Throws<ArgumentException>(() => l.UseProxyProtocol(o => o.TrustedProxies.Add(trusted))));
        Assert.Contains(expected, error!.Message, StringComparison.Ordinal);

        listen.Listen(IPAddress.Loopback, 0, l => error = Assert.Throws<ArgumentException>(() => l.UseProxyProtocol(o => { o.TrustedProxies.Add("::1"); o.HeaderTimeout = TimeSpan.Zero; })));
        Assert.Contains("ProxyProtocolOptions.HeaderTimeout is 00:00:00; it must be between", error!.Message, StringComparison.Ordinal);

        listen.Listen(IPAddress.Loopback, 0, l => error = Assert.Throws<ArgumentException>(() => l.UseProxyProtocol(_ => { })));
        Assert.Contains("ProxyProtocolOptions.TrustedProxies is empty", error!.Message, StringComparison.Ordinal);
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static IEnumerable<Exception> Chain(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            yield return e;
            if (e is AggregateException aggregate)
            {
                foreach (var inner in aggregate.InnerExceptions.SelectMany(Chain))
                {
                    yield return inner;
                }
            }
        }
    }
}

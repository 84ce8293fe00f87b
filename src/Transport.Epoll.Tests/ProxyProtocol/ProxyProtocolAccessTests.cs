using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Hosting;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;
using static Transport.Epoll.Tests.Infrastructure.ProxyHeaders;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>
/// Who may send a header: only trusted proxies, refused at accept before anything is read; and what a flood of
/// garbage does (every connection closed with its reason, nothing reaches the application, nothing leaks). Process-wide
/// fd counts: in the serial collection.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class ProxyProtocolAccessTests(ITestOutputHelper output)
{
    private static readonly IPAddress Untrusted = IPAddress.Parse("127.0.0.2");

    [Fact]
    public async Task A_connection_from_an_untrusted_address_is_refused_before_anything_is_read_logged_and_counted()
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o =>
        {
            o.TrustedProxies.Clear();
            o.TrustedProxies.Add("127.0.0.1");
        });
        server.Server.Logs.Expect(e => e.EventId.Id == 106, "the untrusted client");

        var totals = await TransportMetrics.CollectAsync(server.Server, async () =>
        {
            // A valid header from the wrong address: it must not matter what it says.
            await server.ExpectRefusedAsync(Untrusted, V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello"));
            Assert.True(await Poll.UntilAsync(() => server.Server.Logs.Entries.Any(e => e.EventId.Id == 106)));

            // The trusted address still gets through (same server, same port).
            var (line, _) = await server.ExchangeAsync(V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), [], s => s.Bind(new IPEndPoint(IPAddress.Loopback, 0)));
            Assert.StartsWith("192.0.2.1:56324|", line, StringComparison.Ordinal);
        });

        LogEntry refused = server.Server.Logs.Entries.Single(e => e.EventId.Id == 106);
        Assert.Contains("127.0.0.2", refused.Message, StringComparison.Ordinal);
        Assert.Equal(1, totals.GetValueOrDefault("epoll.proxy_protocol.untrusted"));

        // Refused before it became a connection: only the trusted one was accepted.
        Assert.Equal(1, totals.GetValueOrDefault("epoll.connections.accepted"));
        Assert.Equal(1, server.Handled);
    }

    [Fact]
    public async Task A_flood_from_an_untrusted_address_is_counted_in_full_but_logged_at_most_once_a_second()
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o =>
        {
            o.TrustedProxies.Clear();
            o.TrustedProxies.Add("127.0.0.1");
        });
        server.Server.Logs.Expect(e => e.EventId.Id == 106, "the untrusted flood");

        const int Refused = 200;
        var clock = Stopwatch.StartNew();
        var totals = await TransportMetrics.CollectAsync(server.Server, async () =>
        {
            for (int i = 0; i < Refused; i++)
            {
                await server.ExpectRefusedAsync(Untrusted, V1("PROXY UNKNOWN\r\n"));
            }
        });
        clock.Stop();

        Assert.Equal(Refused, totals.GetValueOrDefault("epoll.proxy_protocol.untrusted"));
        int logged = server.Server.Logs.Entries.Count(e => e.EventId.Id == 106);
        Assert.InRange(logged, 1, 1 + (int)clock.Elapsed.TotalSeconds);
        Assert.Equal(0, server.Handled);
    }

    [Fact]
    public async Task A_CIDR_range_trusts_every_address_in_it()
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o =>
        {
            o.TrustedProxies.Clear();
            o.TrustedProxies.Add("127.0.0.0/30");
        });

        foreach (string address in new[] { "127.0.0.1", "127.0.0.2", "127.0.0.3" })
        {
            var (line, _) = await server.ExchangeAsync(V1("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), [], s => s.Bind(new IPEndPoint(IPAddress.Parse(address), 0)));
            Assert.StartsWith("192.0.2.1:1|", line, StringComparison.Ordinal);
        }

        server.Server.Logs.Expect(e => e.EventId.Id == 106, "127.0.0.4 is outside 127.0.0.0/30");
        await server.ExpectRefusedAsync(IPAddress.Parse("127.0.0.4"), V1("PROXY UNKNOWN\r\n"));
        Assert.True(await Poll.UntilAsync(() => server.Server.Logs.Entries.Any(e => e.EventId.Id == 106)));
        Assert.Equal(3, server.Handled);
    }

    [Fact]
    public async Task IPv6_proxies_and_IPv4_peers_of_a_dual_stack_socket_are_matched()
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o =>
        {
            o.TrustedProxies.Clear();
            o.TrustedProxies.Add("::1");
            o.TrustedProxies.Add("127.0.0.1");
        }, new IPEndPoint(IPAddress.IPv6Any, 0));
        int port = ((IPEndPoint)server.EndPoint).Port;

        var (v6, _) = await server.ExchangeAsync(V1("PROXY TCP6 2001:db8::1 ::1 1 2\r\n"), [], null, new IPEndPoint(IPAddress.IPv6Loopback, port));
        Assert.StartsWith("[2001:db8::1]:1|", v6, StringComparison.Ordinal);
        var (v4, _) = await server.ExchangeAsync(V1("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), [], null, new IPEndPoint(IPAddress.Loopback, port));
        Assert.StartsWith("192.0.2.1:1|", v4, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ten_thousand_connections_of_random_garbage_are_each_closed_nothing_reaches_the_application_and_nothing_leaks()
    {
        const int count = 10_000;
        const int concurrency = 32;
        await using var server = await ProxyProtocolServer.StartAsync(null, o => o.HeaderTimeout = TimeSpan.FromSeconds(10));
        int baseline = ProcessInfo.OpenFdCount();
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;
        int next = -1, leftoverBytes = 0;
        var elapsed = Stopwatch.StartNew();

        var totals = await TransportMetrics.CollectAsync(server.Server, async () =>
        {
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < count)
                {
                    var random = new Random(i);
                    byte[] garbage = new byte[random.Next(1, 300)];
                    random.NextBytes(garbage);
                    using var socket = await Client.ConnectAsync(server.EndPoint);
                    try
                    {
                        await socket.SendAllAsync(garbage);
                        socket.Shutdown(SocketShutdown.Send);
                    }
                    catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted)
                    {
                        // Refused on its first bytes, before the client finished writing.
                    }

                    Interlocked.Add(ref leftoverBytes, await ProxyProtocolServer.ReceiveUntilClosedAsync(socket));
                }
            })).WaitAsync(TimeSpan.FromSeconds(120));

            // One loop counts a close right after the fd closed, which the client may see first.
            Assert.True(await Poll.UntilAsync(() => server.Rejections.Count == count), $"{server.Rejections.Count} of {count} rejections logged.");
        });

        output.WriteLine($"{count} garbage connections in {elapsed.ElapsedMilliseconds} ms.");
        Assert.Equal(0, leftoverBytes);
        Assert.Equal(0, server.Handled);
        Assert.All(server.Rejections, e => Assert.Equal(209, e.EventId.Id));
        Assert.Equal(count, totals.GetValueOrDefault("epoll.connections.accepted"));

        int after = 0;
        Assert.True(await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + 8), $"{after - baseline} fds more than before: {ProcessInfo.DescribeNewFds(before)}");
        Assert.True(await Poll.UntilAsync(() => ConnectionTable.Shared.Count == tableBaseline), "Connection-table slots leaked.");
    }

    [Fact]
    public async Task An_endpoint_with_UseProxyProtocol_served_by_another_transport_refuses_every_connection()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Sockets,
            ConfigureListen = listen => listen.UseProxyProtocol(o => o.TrustedProxies.Add("127.0.0.1")),
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        });
        server.Logs.Expect(e => e.EventId.Id == 108, "the Sockets transport reads no PROXY header");

        await ProxyProtocolServer.ExpectRefusedAsync(server.EndPoint, null, V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello"));
        Assert.True(await Poll.UntilAsync(() => server.Logs.Entries.Any(e => e.EventId.Id == 108)));
    }

    [Fact]
    public async Task Only_the_endpoint_with_UseProxyProtocol_requires_a_header()
    {
        int endpoints = 0;
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.Loopback, 0)],
            ConfigureListen = listen =>
            {
                if (endpoints++ == 0)
                {
                    listen.UseProxyProtocol(o => o.TrustedProxies.Add("127.0.0.1"));
                }
            },
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        });

        using var proxied = await Client.ConnectAsync(server.EndPoints[0]);
        await proxied.SendAllAsync(Concat(V1("PROXY UNKNOWN\r\n"), "hi"u8.ToArray()));
        Assert.Equal("hi"u8.ToArray(), await proxied.ReceiveExactlyAsync(2));

        // The other endpoint takes "PROXY ..." as the application's bytes.
        using var plain = await Client.ConnectAsync(server.EndPoints[1]);
        await plain.SendAllAsync("PROXY UNKNOWN\r\n");
        Assert.Equal("PROXY UNKNOWN\r\n"u8.ToArray(), await plain.ReceiveExactlyAsync(15));
    }
}

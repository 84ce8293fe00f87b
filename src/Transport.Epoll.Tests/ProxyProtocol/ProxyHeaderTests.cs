using System.Net;
using System.Net.Sockets;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;
using static Transport.Epoll.Tests.Infrastructure.ProxyHeaders;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>
/// Hand-built PROXY protocol headers (HAProxy's doc/proxy-protocol.txt) sent over real loopback sockets to an endpoint
/// that requires them: valid ones set the connection's endpoints and features and leave the bytes after them to the
/// application; malformed, truncated and late ones close the connection with their own reason before the application
/// sees it.
/// </summary>
public sealed class ProxyHeaderTests(ITestOutputHelper output)
{
    private static readonly IPEndPoint Client4 = new(IPAddress.Parse("192.0.2.1"), 56324);
    private static readonly IPEndPoint Server4 = new(IPAddress.Parse("198.51.100.2"), 443);
    private static readonly IPEndPoint Client6 = new(IPAddress.Parse("2001:db8::1"), 40000);
    private static readonly IPEndPoint Server6 = new(IPAddress.Parse("2001:db8::ffff:2"), 8443);
    private static readonly byte[] After = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n");

    public static TheoryData<string, byte[], string> ValidHeaders => new()
    {
        { "v1 TCP4", V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), "192.0.2.1:56324|198.51.100.2:443|1|Proxy|0" },
        { "v1 TCP4 extremes", V1("PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"), "255.255.255.255:65535|0.0.0.0:0|1|Proxy|0" },
        { "v1 TCP6", V1("PROXY TCP6 2001:db8::1 2001:db8::ffff:2 40000 8443\r\n"), "[2001:db8::1]:40000|[2001:db8::ffff:2]:8443|1|Proxy|0" },
        { "v1 TCP6 full form", V1("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff FFFF:0:0:0:0:0:0:1 65535 65535\r\n"), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535|[ffff::1]:65535|1|Proxy|0" },
        { "v1 TCP6 IPv4-mapped", V1("PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"), "[::ffff:192.0.2.1]:1|[::1]:2|1|Proxy|0" },
        { "v2 TCP4", V2Tcp(Client4, Server4), "192.0.2.1:56324|198.51.100.2:443|2|Proxy|0" },
        { "v2 TCP6", V2Tcp(Client6, Server6), "[2001:db8::1]:40000|[2001:db8::ffff:2]:8443|2|Proxy|0" },
        { "v2 TCP4 with a NOOP TLV", V2Tcp(Client4, Server4, Tlv(0x04, [0, 0, 0])), "192.0.2.1:56324|198.51.100.2:443|2|Proxy|1" },
        { "v2 TCP4 with an empty TLV", V2Tcp(Client4, Server4, Tlv(0xE0, [])), "192.0.2.1:56324|198.51.100.2:443|2|Proxy|1" },
    };

    /// <summary>Headers after which the connection keeps its real endpoints: LOCAL, UNKNOWN, AF_UNSPEC and the
    /// families the specification lets a receiver fall back from (UDP, AF_UNIX).</summary>
    public static TheoryData<string, byte[], int, string> HeadersThatKeepTheRealEndpoints => new()
    {
        { "v1 UNKNOWN, short form", V1("PROXY UNKNOWN\r\n"), 1, "Proxy" },
        { "v1 UNKNOWN, with addresses (ignored)", V1("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), 1, "Proxy" },
        { "v2 LOCAL, AF_UNSPEC, no address", V2(Local, Unspec, []), 2, "Local" },
        { "v2 LOCAL with a TCP4 block (skipped)", V2(Local, Tcp4, Addresses(Client4, Server4)), 2, "Local" },
        { "v2 LOCAL, AF_UNSPEC, with bytes it must skip", V2(Local, Unspec, [1, 2, 3, 4, 5, 6, 7]), 2, "Local" },
        { "v2 LOCAL whose length is short of its family's block (the family is ignored)", V2(Local, Tcp4, new byte[4]), 2, "Local" },
        { "v2 PROXY, AF_UNSPEC", V2(Proxy, Unspec, []), 2, "Proxy" },
        { "v2 PROXY, UDP over IPv4", V2(Proxy, Udp4, Addresses(Client4, Server4)), 2, "Proxy" },
        { "v2 PROXY, AF_UNIX stream", V2(Proxy, UnixStream, new byte[216]), 2, "Proxy" },
    };

    /// <summary>Every way the specification says a header is wrong, each with the words its log line must carry. The
    /// bytes are sent without a FIN: the parser must refuse them as they are, not wait.</summary>
    public static TheoryData<string, byte[], string> MalformedHeaders => new()
    {
        { "HTTP instead of a header", V1("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "not a PROXY protocol header" },
        { "TLS instead of a header", [0x16, 0x03, 0x01, 0x00, 0x10], "not a PROXY protocol header" },
        { "v1 lower case", V1("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "not a PROXY protocol header" },
        { "v1 PROXY without its space", V1("PROXY\r\n"), "starts with \"PROXY \"" },
        { "v1 PROXY then a tab", V1("PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "starts with \"PROXY \"" },
        { "v1 ends with LF only", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "LF without CR" },
        { "v1 CR not followed by LF", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), "CR not followed by LF" },
        { "v1 no CRLF within 107 bytes", V1("PROXY UNKNOWN " + new string('a', 120)), "first 107 bytes" },
        { "v1 CRLF at bytes 107-108", V1("PROXY UNKNOWN " + new string('a', 92) + "\r\n"), "first 107 bytes" },
        { "v1 unknown protocol", V1("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), "not TCP4, TCP6 or UNKNOWN" },
        { "v1 UNKNOWNX", V1("PROXY UNKNOWNX\r\n"), "not TCP4, TCP6 or UNKNOWN" },
        { "v1 no protocol", V1("PROXY \r\n"), "not TCP4, TCP6 or UNKNOWN" },
        { "v1 three fields", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), "four fields" },
        { "v1 five fields", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), "four fields" },
        { "v1 two spaces", V1("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), "four fields" },
        { "v1 trailing space", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), "four fields" },
        { "v1 TCP4 three octets", V1("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), "dotted quad" },
        { "v1 TCP4 leading zero", V1("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), "dotted quad" },
        { "v1 TCP4 octet over 255", V1("PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n"), "dotted quad" },
        { "v1 TCP4 empty octet", V1("PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"), "dotted quad" },
        { "v1 TCP4 with an IPv6 address", V1("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), "dotted quad" },
        { "v1 TCP6 with an IPv4 address", V1("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), "not IPv6" },
        { "v1 TCP6 with a zone id", V1("PROXY TCP6 fe80::1%1 ::1 1 2\r\n"), "not IPv6" },
        { "v1 TCP6 with too many groups", V1("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"), "not IPv6" },
        { "v1 port over 65535", V1("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "port" },
        { "v1 port with a leading zero", V1("PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n"), "port" },
        { "v1 negative port", V1("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), "port" },
        { "v1 port not a number", V1("PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n"), "port" },
        { "v2 signature wrong in byte 5", Corrupt(V2Tcp(Client4, Server4), 4, 0x01), "v2 signature does not match" },
        { "v2 signature wrong in byte 12", Corrupt(V2Tcp(Client4, Server4), 11, 0x0B), "v2 signature does not match" },
        { "v2 version 1", V2(0x11, Tcp4, Addresses(Client4, Server4)), "version 1" },
        { "v2 version 3", V2(0x31, Tcp4, Addresses(Client4, Server4)), "version 3" },
        { "v2 command 2", V2(0x22, Tcp4, Addresses(Client4, Server4)), "command 2" },
        { "v2 command 15", V2(0x2F, Tcp4, Addresses(Client4, Server4)), "command 15" },
        { "v2 address family 4", V2(Proxy, 0x41, Addresses(Client4, Server4)), "address family 4" },
        { "v2 transport protocol 3", V2(Proxy, 0x13, Addresses(Client4, Server4)), "transport protocol 3" },
        { "v2 TCP4 length too short", V2(Proxy, Tcp4, new byte[8]), "too short" },
        { "v2 TCP6 length too short", V2(Proxy, Tcp6, Addresses(Client4, Server4)), "too short" },
        { "v2 AF_UNIX length too short", V2(Proxy, UnixStream, new byte[100]), "too short" },
        { "v2 TLV past the length", V2Tcp(Client4, Server4, [0x01, 0x00, 0x10, 0x68, 0x32]), "runs past" },
        { "v2 two bytes after the last TLV", V2Tcp(Client4, Server4, Tlv(0x04, []), [0x01, 0x00]), "ends inside a TLV" },
        { "v2 CRC32C mismatch", Corrupt(WithCrc32C(V2Tcp(Client4, Server4, Tlv(0x03, new byte[4]))), 16, 0x0A), "CRC32C checksum does not match" },
        { "v2 CRC32C of 2 bytes", V2Tcp(Client4, Server4, Tlv(0x03, new byte[2])), "CRC32C TLV that is not 4 bytes" },
        { "v2 unique id over 128 bytes", V2Tcp(Client4, Server4, Tlv(0x05, new byte[129])), "unique id" },
        { "v2 SSL TLV shorter than client+verify", V2Tcp(Client4, Server4, Tlv(0x20, [1, 0, 0])), "SSL TLV" },
        { "v2 SSL sub-TLV past its TLV", V2Tcp(Client4, Server4, Tlv(0x20, [1, 0, 0, 0, 0, 0x21, 0x00, 0x09, 0x54])), "SSL TLV" },
    };

    /// <summary>Beginnings of valid headers, then the client's FIN: a truncated header is refused, never taken as one.</summary>
    public static TheoryData<string, byte[]> TruncatedHeaders
    {
        get
        {
            var data = new TheoryData<string, byte[]>();
            byte[] v1 = V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
            byte[] v2 = V2Tcp(Client4, Server4, Tlv(0x01, "h2"u8.ToArray()));
            data.Add("nothing at all", []);
            foreach (int length in new[] { 1, 5, 6, 20, v1.Length - 2, v1.Length - 1 })
            {
                data.Add($"v1, first {length} of {v1.Length} bytes", v1[..length]);
            }

            foreach (int length in new[] { 1, 12, 13, 14, 15, 16, 27, 28, v2.Length - 1 })
            {
                data.Add($"v2, first {length} of {v2.Length} bytes", v2[..length]);
            }

            data.Add("v2 whose length says 500 bytes, 40 sent", V2(Proxy, Tcp4, Concat(Addresses(Client4, Server4), Tlv(0x04, new byte[21])), length: 500));
            return data;
        }
    }

    [Theory, MemberData(nameof(ValidHeaders))]
    public async Task A_valid_header_becomes_the_connections_endpoints_and_the_bytes_after_it_reach_the_application(string name, byte[] header, string expected)
    {
        await using var server = await ProxyProtocolServer.StartAsync(output);
        var (line, echo) = await server.ExchangeAsync(header, After);
        Assert.True(expected == line, $"{name}: expected {expected}, the handler saw {line}");
        Assert.Equal(After, echo);
    }

    [Theory, MemberData(nameof(HeadersThatKeepTheRealEndpoints))]
    public async Task LOCAL_UNKNOWN_and_unmapped_families_keep_the_proxys_own_endpoints(string name, byte[] header, int version, string command)
    {
        await using var server = await ProxyProtocolServer.StartAsync(output);
        var (seen, echo) = await server.ExchangeAsync(header, After, s => s.Bind(new IPEndPoint(IPAddress.Loopback, 0)));
        string[] parts = seen.Split('|');
        Assert.True(parts[0].StartsWith("127.0.0.1:", StringComparison.Ordinal), $"{name}: remote {parts[0]}");
        Assert.Equal(server.EndPoint.ToString(), parts[1]);
        Assert.Equal(version.ToString(System.Globalization.CultureInfo.InvariantCulture), parts[2]);
        Assert.Equal(command, parts[3]);
        Assert.Equal(After, echo);
    }

    [Theory, MemberData(nameof(MalformedHeaders))]
    public async Task A_malformed_header_closes_the_connection_with_its_reason_and_nothing_reaches_the_application(string name, byte[] header, string reason)
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o => o.HeaderTimeout = TimeSpan.FromSeconds(30));
        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync(header);
        Assert.Equal(0, await ProxyProtocolServer.ReceiveUntilClosedAsync(socket));
        LogEntry rejection = await server.RejectionAsync();
        Assert.True(rejection.EventId.Id == 209 && rejection.Message.Contains(reason, StringComparison.Ordinal), $"{name}: expected '{reason}', logged {rejection}");
        Assert.Equal(0, server.Handled);
    }

    [Theory, MemberData(nameof(TruncatedHeaders))]
    public async Task A_truncated_header_closes_the_connection_and_nothing_reaches_the_application(string name, byte[] prefix)
    {
        await using var server = await ProxyProtocolServer.StartAsync(output, o => o.HeaderTimeout = TimeSpan.FromSeconds(30));
        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync(prefix);
        socket.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await ProxyProtocolServer.ReceiveUntilClosedAsync(socket));
        LogEntry rejection = await server.RejectionAsync();
        Assert.True(rejection.EventId.Id == 209 && rejection.Message.Contains("before its PROXY protocol header was complete", StringComparison.Ordinal), $"{name}: logged {rejection}");
        Assert.Equal(0, server.Handled);
    }

    [Fact]
    public async Task TLVs_are_exposed_and_a_valid_CRC32C_is_accepted()
    {
        IProxyProtocolFeature? seen = null;
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureListen = listen => Microsoft.AspNetCore.Hosting.ProxyProtocolListenOptionsExtensions.UseProxyProtocol(listen, o => o.TrustedProxies.Add("127.0.0.0/8")),
            ConnectionHandler = async connection =>
            {
                seen = connection.Features.Get<IProxyProtocolFeature>();
                await Handlers.EchoAsync(connection);
            },
            Output = output,
        });

        byte[] ssl = Concat([0x07, 0x00, 0x00, 0x00, 0x00], Tlv(0x21, "TLSv1.3"u8.ToArray()), Tlv(0x22, "client.example"u8.ToArray()), Tlv(0x23, "TLS_AES_128_GCM_SHA256"u8.ToArray()));
        byte[] header = WithCrc32C(V2Tcp(Client6, Server6,
            Tlv(0x01, "h2"u8.ToArray()),
            Tlv(0x02, "example.com"u8.ToArray()),
            Tlv(0x05, new byte[128]),
            Tlv(0x20, ssl),
            Tlv(0xEA, [0x01, .. "vpce-0123"u8]),
            Tlv(0x03, new byte[4])));

        using var socket = await Client.ConnectAsync(server.EndPoint);
        await socket.SendAllAsync(Concat(header, After));
        Assert.Equal(After, await socket.ReceiveExactlyAsync(After.Length));

        Assert.NotNull(seen);
        Assert.Equal(2, seen.Version);
        Assert.Equal(Client6, seen.SourceEndPoint);
        Assert.Equal(Server6, seen.DestinationEndPoint);
        Assert.Equal([0x01, 0x02, 0x05, 0x20, 0xEA, 0x03], seen.Tlvs.Select(t => t.Type));
        Assert.Equal("h2", seen.GetAlpn());
        Assert.Equal("example.com", seen.GetAuthority());
        Assert.Equal(128, seen.GetUniqueId()!.Value.Length);
        Assert.Equal("vpce-0123", Encoding.ASCII.GetString(seen.GetTlv(ProxyProtocolTlvType.Aws)!.Value.Span[1..]));
        var tls = seen.GetSsl();
        Assert.NotNull(tls);
        Assert.True(tls.IsTls && tls.HasClientCertificate);
        Assert.Equal(0u, tls.Verify);
        Assert.Equal("TLSv1.3", tls.Version);
        Assert.Equal("client.example", tls.CommonName);
        Assert.Equal("TLS_AES_128_GCM_SHA256", tls.Cipher);
        Assert.Null(seen.GetTlv(0x30));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_header_written_one_byte_at_a_time_is_read_and_the_bytes_after_it_are_intact(int version)
    {
        await using var server = await ProxyProtocolServer.StartAsync(output);
        byte[] header = version == 1
            ? V1("PROXY TCP6 2001:db8::1 2001:db8::ffff:2 40000 8443\r\n")
            : V2Tcp(Client6, Server6, Tlv(0x02, "example.com"u8.ToArray()), Tlv(0x04, new byte[40]));
        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.NoDelay = true);
        foreach (byte b in header)
        {
            await socket.SendAllAsync(new[] { b });

            // Pacing, not synchronisation: it gives each byte its own read on the server, which is what this test is
            // about (coalesced bytes would still pass, testing less).
            await Task.Delay(1);
        }

        byte[] after = Client.RandomBytes(100_000, seed: version);
        var line = socket.ReceiveLineAsync();
        await socket.SendAllAsync(after);
        Assert.Equal($"[2001:db8::1]:40000|[2001:db8::ffff:2]:8443|{version}|Proxy|{(version == 1 ? 0 : 2)}", await line);
        Assert.Equal(Client.Sha256(after), Client.Sha256(await socket.ReceiveExactlyAsync(after.Length)));
    }

    [Fact]
    public async Task Application_bytes_in_the_same_segment_as_the_header_arrive_untouched()
    {
        await using var server = await ProxyProtocolServer.StartAsync(output);
        foreach (byte[] header in new[] { V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), V2Tcp(Client4, Server4, Tlv(0x01, "h2"u8.ToArray())) })
        {
            // The first bytes after a v1 header look like a header's beginning ("PROXY ", CRLF): they are the application's.
            byte[] after = Concat(V1("PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n\r\n"), V2Signature, Client.RandomBytes(40_000, seed: header.Length));
            var (_, echo) = await server.ExchangeAsync(header, after);
            Assert.Equal(Client.Sha256(after), Client.Sha256(echo));
        }
    }

    [Fact]
    public async Task A_header_that_never_completes_is_closed_at_the_timeout_with_its_reason()
    {
        var timeout = TimeSpan.FromMilliseconds(300);
        await using var server = await ProxyProtocolServer.StartAsync(output, o => o.HeaderTimeout = timeout);
        foreach (byte[] prefix in new[] { Array.Empty<byte>(), V1("PROXY TCP4 1.2.3.4"), V2Tcp(Client4, Server4)[..20] })
        {
            int before = server.Rejections.Count;
            // Started before the connect: the server's clock for the header starts at the accept, after the handshake.
            var started = System.Diagnostics.Stopwatch.StartNew();
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync(prefix);
            Assert.Equal(0, await ProxyProtocolServer.ReceiveUntilClosedAsync(socket));
            Assert.True(started.Elapsed >= timeout - TimeSpan.FromMilliseconds(20), $"Closed after {started.ElapsedMilliseconds} ms, before the {timeout.TotalMilliseconds} ms timeout.");
            LogEntry rejection = await server.RejectionAsync(before + 1);
            Assert.Equal(210, rejection.EventId.Id);
            Assert.Contains("within 300 ms", rejection.Message, StringComparison.Ordinal);
        }

        Assert.Equal(0, server.Handled);
    }

    [Fact]
    public async Task The_close_reasons_are_counted_in_the_closed_connections_metric()
    {
        // One loop: it closes (and counts) the first two connections before it can serve the third, whose answer the
        // test waits for, so the counts are complete when the exchange returns.
        await using var server = await ProxyProtocolServer.StartAsync(output, o => o.HeaderTimeout = TimeSpan.FromMilliseconds(200), epoll: o => o.ThreadCount = 1);
        var totals = await TransportMetrics.CollectAsync(server.Server, async () =>
        {
            using (var invalid = await Client.ConnectAsync(server.EndPoint))
            {
                await invalid.SendAllAsync("GET / HTTP/1.1\r\n\r\n");
                await ProxyProtocolServer.ReceiveUntilClosedAsync(invalid);
            }

            using (var late = await Client.ConnectAsync(server.EndPoint))
            {
                await ProxyProtocolServer.ReceiveUntilClosedAsync(late);
            }

            await server.ExchangeAsync(V1("PROXY UNKNOWN\r\n"), []);
        });

        Assert.Equal(1, totals.GetValueOrDefault("epoll.connections.closed[reason=ProxyHeaderInvalid]"));
        Assert.Equal(1, totals.GetValueOrDefault("epoll.connections.closed[reason=ProxyHeaderTimeout]"));
        Assert.Equal(3, totals.GetValueOrDefault("epoll.connections.accepted"));
    }

    [Fact]
    public async Task A_connection_still_reading_its_header_when_the_server_stops_is_handed_over_and_served()
    {
        var server = await ProxyProtocolServer.StartAsync(output);
        try
        {
            byte[] header = V1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync(header.AsMemory(0, 10));

            // The listener closes its port first thing on stop: once a new connection is refused, the unbind is under way.
            Task stopping = server.Server.StopAsync();
            Assert.True(await Poll.UntilAsync(async () =>
            {
                try
                {
                    using var probe = await Client.ConnectAsync(server.EndPoint);
                    return false;
                }
                catch (SocketException)
                {
                    return true;
                }
            }), "The port stayed open after StopAsync.");
            Assert.False(stopping.IsCompleted, "The stop did not wait for the connection reading its header.");

            await socket.SendAllAsync(Concat(header[10..], After));
            Assert.Equal("192.0.2.1:56324|198.51.100.2:443|1|Proxy|0", await socket.ReceiveLineAsync());
            Assert.Equal(After, await socket.ReceiveExactlyAsync(After.Length));
            socket.Shutdown(SocketShutdown.Send);
            await stopping.WithTimeout(Timeouts.Bulk);
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    private static byte[] Corrupt(byte[] header, int index, byte value)
    {
        header[index] = value;
        return header;
    }
}

using System.Net;
using Transport.Epoll.Internal;
using static Transport.Epoll.Tests.Infrastructure.ProxyHeaders;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>The parser alone, on every prefix of a header: the socket tests cover the cases; these pin the parser's
/// promise that a prefix of a valid header is never refused and never taken as complete.</summary>
public sealed class ProxyHeaderParserTests
{
    [Fact]
    public void Every_prefix_of_a_valid_header_asks_for_more_and_the_whole_header_is_complete()
    {
        var source = new IPEndPoint(IPAddress.Parse("192.0.2.1"), 1);
        var destination = new IPEndPoint(IPAddress.Parse("192.0.2.2"), 2);
        byte[][] headers =
        [
            V1("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"),
            V1("PROXY UNKNOWN\r\n"),
            V2Tcp(source, destination, Tlv(0x01, "h2"u8.ToArray())),
            WithCrc32C(V2Tcp(source, destination, Tlv(0x03, new byte[4]))),
        ];

        foreach (byte[] header in headers)
        {
            for (int length = 0; length < header.Length; length++)
            {
                Assert.Equal(ProxyHeaderStatus.NeedMore, ProxyHeaderParser.Parse(header.AsSpan(0, length), out _, out string? error));
                Assert.Null(error);
            }

            Assert.Equal(ProxyHeaderStatus.Complete, ProxyHeaderParser.Parse(Concat(header, [0x50, 0x0D]), out ProxyHeader parsed, out string? none));
            Assert.Null(none);
            Assert.Equal(header.Length, parsed.Length);
        }
    }

    [Fact]
    public void A_wrong_CRC32C_is_refused()
    {
        byte[] header = WithCrc32C(V2Tcp(new IPEndPoint(IPAddress.Loopback, 1), new IPEndPoint(IPAddress.Loopback, 2), Tlv(0x03, new byte[4])));
        header[16] ^= 0x80;
        Assert.Equal(ProxyHeaderStatus.Invalid, ProxyHeaderParser.Parse(header, out _, out string? error));
        Assert.Contains("CRC32C", error, StringComparison.Ordinal);
    }
}

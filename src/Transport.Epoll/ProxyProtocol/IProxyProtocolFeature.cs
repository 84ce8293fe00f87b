using System.Net;

namespace Transport.Epoll;

/// <summary>
/// The PROXY protocol header a connection started with, on an endpoint that requires one
/// (<see cref="ProxyProtocolOptions"/>). Get it from <c>ConnectionContext.Features</c> or <c>HttpContext.Features</c>.
/// The connection's <c>RemoteEndPoint</c> and <c>LocalEndPoint</c> already are the header's source and destination
/// when it carried them; this says what the header said.
/// </summary>
public interface IProxyProtocolFeature
{
    /// <summary>1 for the text header (<c>PROXY TCP4 ...</c>), 2 for the binary one.</summary>
    int Version { get; }

    /// <summary><see cref="ProxyProtocolCommand.Local"/>: the proxy's own connection (a health check);
    /// <see cref="ProxyProtocolCommand.Proxy"/>: relayed for a client.</summary>
    ProxyProtocolCommand Command { get; }

    /// <summary>The client's address and port; <see langword="null"/> when the header carried none (LOCAL, v1
    /// UNKNOWN, v2 AF_UNSPEC, or a family or protocol the transport does not map, such as UDP or AF_UNIX), in which
    /// case the connection keeps the proxy's own addresses.</summary>
    IPEndPoint? SourceEndPoint { get; }

    /// <summary>The address and port the client connected to; <see langword="null"/> as for <see cref="SourceEndPoint"/>.</summary>
    IPEndPoint? DestinationEndPoint { get; }

    /// <summary>The v2 header's type-length-value fields in the order sent (empty for v1), values as raw bytes. See
    /// <see cref="ProxyProtocolTlvType"/> and <see cref="ProxyProtocolFeatureExtensions"/> for the registered types.</summary>
    IReadOnlyList<ProxyProtocolTlv> Tlvs { get; }
}

/// <summary>The command of a PROXY protocol header.</summary>
public enum ProxyProtocolCommand
{
    /// <summary>The proxy opened the connection for itself (health checks): the real endpoints are kept.</summary>
    Local = 0,

    /// <summary>The connection is relayed on behalf of a client.</summary>
    Proxy = 1,
}

/// <summary>One type-length-value field of a v2 header.</summary>
public readonly struct ProxyProtocolTlv
{
    /// <summary>A TLV of <paramref name="type"/> whose value is <paramref name="value"/>.</summary>
    public ProxyProtocolTlv(byte type, ReadOnlyMemory<byte> value)
    {
        Type = type;
        Value = value;
    }

    /// <summary>The type byte (<see cref="ProxyProtocolTlvType"/>).</summary>
    public byte Type { get; }

    /// <summary>The value's bytes as sent.</summary>
    public ReadOnlyMemory<byte> Value { get; }
}

/// <summary>TLV types registered by the specification (section 2.2), and two cloud providers' custom ones.</summary>
public static class ProxyProtocolTlvType
{
    /// <summary>PP2_TYPE_ALPN: the application protocol negotiated with the client (a copy of TLS ALPN).</summary>
    public const byte Alpn = 0x01;

    /// <summary>PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI), UTF-8.</summary>
    public const byte Authority = 0x02;

    /// <summary>PP2_TYPE_CRC32C: a checksum of the header; the transport verifies it and closes the connection on a mismatch.</summary>
    public const byte Crc32C = 0x03;

    /// <summary>PP2_TYPE_NOOP: padding, to be ignored.</summary>
    public const byte Noop = 0x04;

    /// <summary>PP2_TYPE_UNIQUE_ID: an opaque id of up to 128 bytes the proxy gave the connection.</summary>
    public const byte UniqueId = 0x05;

    /// <summary>PP2_TYPE_SSL: how the client connected over TLS (<see cref="ProxyProtocolFeatureExtensions.GetSsl"/>).</summary>
    public const byte Ssl = 0x20;

    /// <summary>PP2_TYPE_NETNS: the network namespace's name, US-ASCII.</summary>
    public const byte NetNamespace = 0x30;

    /// <summary>AWS Network Load Balancer (PP2_TYPE_AWS, a custom type): its first byte is a subtype, 0x01 the VPC endpoint id.</summary>
    public const byte Aws = 0xEA;

    /// <summary>Azure Private Link (PP2_TYPE_AZURE, a custom type): its first byte is a subtype, 0x01 the LinkID.</summary>
    public const byte Azure = 0xEE;
}

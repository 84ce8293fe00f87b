using System.Buffers.Binary;
using System.Text;

namespace Transport.Epoll;

/// <summary>Reads the registered TLVs of a <see cref="IProxyProtocolFeature"/> (the specification's section 2.2).</summary>
public static class ProxyProtocolFeatureExtensions
{
    /// <summary>The value of the first TLV of <paramref name="type"/>, or <see langword="null"/> when the header has none.</summary>
    public static ReadOnlyMemory<byte>? GetTlv(this IProxyProtocolFeature feature, byte type)
    {
        ArgumentNullException.ThrowIfNull(feature);
        foreach (ProxyProtocolTlv tlv in feature.Tlvs)
        {
            if (tlv.Type == type)
            {
                return tlv.Value;
            }
        }

        return null;
    }

    /// <summary>PP2_TYPE_ALPN as text (<c>h2</c>, <c>http/1.1</c>), or <see langword="null"/>.</summary>
    public static string? GetAlpn(this IProxyProtocolFeature feature)
        => feature.GetTlv(ProxyProtocolTlvType.Alpn) is { } value ? Encoding.ASCII.GetString(value.Span) : null;

    /// <summary>PP2_TYPE_AUTHORITY (the client's TLS SNI), or <see langword="null"/>.</summary>
    public static string? GetAuthority(this IProxyProtocolFeature feature)
        => feature.GetTlv(ProxyProtocolTlvType.Authority) is { } value ? Encoding.UTF8.GetString(value.Span) : null;

    /// <summary>PP2_TYPE_UNIQUE_ID's opaque bytes, or <see langword="null"/>.</summary>
    public static ReadOnlyMemory<byte>? GetUniqueId(this IProxyProtocolFeature feature)
        => feature.GetTlv(ProxyProtocolTlvType.UniqueId);

    /// <summary>PP2_TYPE_SSL decoded, or <see langword="null"/> when the header has none.</summary>
    public static ProxyProtocolSsl? GetSsl(this IProxyProtocolFeature feature)
    {
        if (feature.GetTlv(ProxyProtocolTlvType.Ssl) is not { } value)
        {
            return null;
        }

        // The transport checked the layout when it read the header: client (1 byte), verify (4), then sub-TLVs.
        ReadOnlySpan<byte> span = value.Span;
        var subTlvs = new List<ProxyProtocolTlv>();
        int offset = 5;
        while (offset + 3 <= span.Length)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(span[(offset + 1)..]);
            subTlvs.Add(new ProxyProtocolTlv(span[offset], value.Slice(offset + 3, length)));
            offset += 3 + length;
        }

        return new ProxyProtocolSsl(span[0], BinaryPrimitives.ReadUInt32BigEndian(span[1..]), subTlvs);
    }
}

/// <summary>The PP2_TYPE_SSL TLV: how the client reached the proxy over TLS.</summary>
public sealed class ProxyProtocolSsl
{
    internal ProxyProtocolSsl(byte client, uint verify, IReadOnlyList<ProxyProtocolTlv> subTlvs)
    {
        Client = client;
        Verify = verify;
        SubTlvs = subTlvs;
    }

    /// <summary>The <c>client</c> bit field: 0x01 PP2_CLIENT_SSL, 0x02 PP2_CLIENT_CERT_CONN, 0x04 PP2_CLIENT_CERT_SESS.</summary>
    public byte Client { get; }

    /// <summary>Whether the client connected over TLS (PP2_CLIENT_SSL).</summary>
    public bool IsTls => (Client & 0x01) != 0;

    /// <summary>Whether the client presented a certificate on this connection (PP2_CLIENT_CERT_CONN).</summary>
    public bool HasClientCertificate => (Client & 0x02) != 0;

    /// <summary>The <c>verify</c> field: 0 when the client's certificate was presented and verified.</summary>
    public uint Verify { get; }

    /// <summary>The sub-TLVs (PP2_SUBTYPE_SSL_*), values as raw bytes.</summary>
    public IReadOnlyList<ProxyProtocolTlv> SubTlvs { get; }

    /// <summary>PP2_SUBTYPE_SSL_VERSION (0x21), e.g. <c>TLSv1.3</c>.</summary>
    public string? Version => Text(0x21);

    /// <summary>PP2_SUBTYPE_SSL_CN (0x22): the client certificate's Common Name.</summary>
    public string? CommonName => Text(0x22);

    /// <summary>PP2_SUBTYPE_SSL_CIPHER (0x23), e.g. <c>ECDHE-RSA-AES128-GCM-SHA256</c>.</summary>
    public string? Cipher => Text(0x23);

    /// <summary>PP2_SUBTYPE_SSL_SIG_ALG (0x24): the algorithm that signed the proxy's certificate.</summary>
    public string? SignatureAlgorithm => Text(0x24);

    /// <summary>PP2_SUBTYPE_SSL_KEY_ALG (0x25): the algorithm of the proxy certificate's key.</summary>
    public string? KeyAlgorithm => Text(0x25);

    private string? Text(byte type)
    {
        foreach (ProxyProtocolTlv tlv in SubTlvs)
        {
            if (tlv.Type == type)
            {
                return Encoding.UTF8.GetString(tlv.Value.Span);
            }
        }

        return null;
    }
}

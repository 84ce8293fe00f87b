using System.Buffers.Binary;
using System.Net;
using System.Numerics;
using System.Text;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Builds PROXY protocol headers by hand, byte by byte as HAProxy's doc/proxy-protocol.txt lays them out.</summary>
public static class ProxyHeaders
{
    public static readonly byte[] V2Signature = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

    public const byte Local = 0x20;
    public const byte Proxy = 0x21;
    public const byte Tcp4 = 0x11;
    public const byte Udp4 = 0x12;
    public const byte Tcp6 = 0x21;
    public const byte Unspec = 0x00;
    public const byte UnixStream = 0x31;

    public static byte[] V1(string line) => Encoding.ASCII.GetBytes(line);

    /// <summary>A v2 header: signature, version/command, family/protocol, length (the body's unless given), body.</summary>
    public static byte[] V2(byte versionCommand, byte familyProtocol, byte[] body, int? length = null)
    {
        var header = new byte[16 + body.Length];
        V2Signature.CopyTo(header, 0);
        header[12] = versionCommand;
        header[13] = familyProtocol;
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(14), (ushort)(length ?? body.Length));
        body.CopyTo(header, 16);
        return header;
    }

    /// <summary>The address block of TCP/UDP over IPv4 or IPv6: source, destination, source port, destination port.</summary>
    public static byte[] Addresses(IPEndPoint source, IPEndPoint destination)
    {
        byte[] s = source.Address.GetAddressBytes(), d = destination.Address.GetAddressBytes();
        var block = new byte[s.Length * 2 + 4];
        s.CopyTo(block, 0);
        d.CopyTo(block, s.Length);
        BinaryPrimitives.WriteUInt16BigEndian(block.AsSpan(2 * s.Length), (ushort)source.Port);
        BinaryPrimitives.WriteUInt16BigEndian(block.AsSpan(2 * s.Length + 2), (ushort)destination.Port);
        return block;
    }

    public static byte[] Tlv(byte type, byte[] value)
    {
        var tlv = new byte[3 + value.Length];
        tlv[0] = type;
        BinaryPrimitives.WriteUInt16BigEndian(tlv.AsSpan(1), (ushort)value.Length);
        value.CopyTo(tlv, 3);
        return tlv;
    }

    public static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>A v2 PROXY header over TCP for the endpoints' family, with <paramref name="tlvs"/> after the addresses.</summary>
    public static byte[] V2Tcp(IPEndPoint source, IPEndPoint destination, params byte[][] tlvs)
        => V2(Proxy, source.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? Tcp4 : Tcp6, Concat([Addresses(source, destination), .. tlvs]));

    /// <summary>Fills in the CRC32C TLV (type 0x03, 4 bytes, zero when passed) of a complete v2 header (RFC 4960 appendix B).</summary>
    public static byte[] WithCrc32C(byte[] header)
    {
        int at = FindTlv(header, 0x03);
        Array.Clear(header, at + 3, 4);
        uint crc = uint.MaxValue;
        foreach (byte b in header)
        {
            crc = BitOperations.Crc32C(crc, b);
        }

        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(at + 3), ~crc);
        return header;
    }

    private static int FindTlv(byte[] header, byte type)
    {
        int offset = 16 + ((header[13] >> 4) switch { 1 => 12, 2 => 36, 3 => 216, _ => 0 });
        while (offset < header.Length)
        {
            if (header[offset] == type)
            {
                return offset;
            }

            offset += 3 + BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(offset + 1));
        }

        throw new ArgumentException($"No TLV of type {type} in the header.");
    }
}

using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Numerics;

namespace Transport.Epoll.Internal;

/// <summary>What <see cref="ProxyHeaderParser.Parse"/> made of the bytes so far.</summary>
internal enum ProxyHeaderStatus
{
    /// <summary>A valid beginning of a header: wait for more bytes.</summary>
    NeedMore,

    /// <summary>A complete, valid header of <see cref="ProxyHeader.Length"/> bytes.</summary>
    Complete,

    /// <summary>Not a header, or a header the specification says to drop: close the connection.</summary>
    Invalid,
}

/// <summary>A parsed header: where it ends, and what it said (endpoints only when it carried TCP ones).</summary>
internal struct ProxyHeader
{
    public int Length;
    public int Version;
    public ProxyProtocolCommand Command;
    public IPEndPoint? Source;
    public IPEndPoint? Destination;

    /// <summary>Where the v2 TLVs are within the header's bytes (length 0: none).</summary>
    public int TlvOffset;
    public int TlvLength;
}

/// <summary>
/// Parses a PROXY protocol header, version 1 (text) or 2 (binary), as HAProxy's <c>doc/proxy-protocol.txt</c>
/// specifies it, strictly: anything the specification does not allow is invalid (its section 2.1: "Any sequence
/// which does not exactly match the protocol must be discarded"). Works on whatever prefix has arrived: a prefix that
/// cannot begin a valid header is refused at once (so garbage is dropped on its first byte), one that can asks for more.
/// Allocates only the endpoints of a complete header.
/// </summary>
internal static class ProxyHeaderParser
{
    /// <summary>The longest v1 line, CRLF included (section 2.1: "PROXY UNKNOWN" with two full IPv6 addresses and ports).</summary>
    public const int MaxV1Length = 107;

    /// <summary>The fixed part of a v2 header: signature, version and command, family and protocol, length.</summary>
    public const int V2FixedLength = 16;

    private const byte CommandLocal = 0x0;
    private const byte CommandProxy = 0x1;
    private const int FamilyInet = 0x1;
    private const int FamilyInet6 = 0x2;
    private const int FamilyUnix = 0x3;
    private const int ProtocolStream = 0x1;
    private const int MaxUniqueIdLength = 128;

    /// <summary>Section 2.2: the 12 bytes every v2 header starts with.</summary>
    private static ReadOnlySpan<byte> V2Signature => [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

    private static ReadOnlySpan<byte> V1Prefix => "PROXY "u8;

    /// <summary>The most bytes the header starting with <paramref name="data"/> can have: what a reader may take
    /// from the socket into the header without taking the application's bytes past the header (v2) or many of them (v1).</summary>
    public static int MaxLength(ReadOnlySpan<byte> data)
    {
        if (data.Length > 0 && data[0] == (byte)'P')
        {
            return MaxV1Length;
        }

        return data.Length >= V2FixedLength ? V2FixedLength + BinaryPrimitives.ReadUInt16BigEndian(data[14..]) : V2FixedLength;
    }

    public static ProxyHeaderStatus Parse(ReadOnlySpan<byte> data, out ProxyHeader header, out string? error)
    {
        header = default;
        error = null;
        if (data.IsEmpty)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        // Section 2.2's version test: the v2 signature starts with CR, v1 with 'P'; anything else is no header at all.
        return data[0] == (byte)'P' ? ParseV1(data, ref header, out error)
            : data[0] == V2Signature[0] ? ParseV2(data, ref header, out error)
            : Invalid("not a PROXY protocol header (neither \"PROXY \" nor the v2 signature)", out error);
    }

    private static ProxyHeaderStatus ParseV1(ReadOnlySpan<byte> data, ref ProxyHeader header, out string? error)
    {
        error = null;
        int prefix = Math.Min(data.Length, V1Prefix.Length);
        if (!data[..prefix].SequenceEqual(V1Prefix[..prefix]))
        {
            return Invalid("not a PROXY protocol header (a v1 header starts with \"PROXY \")", out error);
        }

        // The line ends with CRLF within 107 bytes, so CR is at index 105 at the latest. A lone CR or LF is invalid
        // ("The receiver must not tolerate a single CR or LF character to end the line").
        int searched = Math.Min(data.Length, MaxV1Length - 1);
        int end = data[..searched].IndexOfAny((byte)'\r', (byte)'\n');
        if (end < 0)
        {
            return data.Length >= MaxV1Length - 1
                ? Invalid("a v1 header without CRLF in its first 107 bytes", out error)
                : ProxyHeaderStatus.NeedMore;
        }

        if (data[end] == (byte)'\n')
        {
            return Invalid("a v1 header line ends with LF without CR", out error);
        }

        if (end + 1 == data.Length)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        if (data[end + 1] != (byte)'\n')
        {
            return Invalid("a v1 header line has a CR not followed by LF", out error);
        }

        if (end < V1Prefix.Length)
        {
            return Invalid("a v1 header without a protocol", out error);
        }

        header.Version = 1;
        header.Command = ProxyProtocolCommand.Proxy;
        header.Length = end + 2;
        ReadOnlySpan<byte> line = data[V1Prefix.Length..end];

        // "UNKNOWN": the rest of the line is to be ignored, and the connection keeps its real endpoints.
        if (line.StartsWith("UNKNOWN"u8) && (line.Length == 7 || line[7] == (byte)' '))
        {
            return ProxyHeaderStatus.Complete;
        }

        AddressFamily family;
        if (line.StartsWith("TCP4 "u8))
        {
            family = AddressFamily.InterNetwork;
        }
        else if (line.StartsWith("TCP6 "u8))
        {
            family = AddressFamily.InterNetworkV6;
        }
        else
        {
            return Invalid("a v1 header whose protocol is not TCP4, TCP6 or UNKNOWN", out error);
        }

        // Exactly: source address, destination address, source port, destination port, one space between each.
        ReadOnlySpan<byte> rest = line[5..];
        Span<Range> fields = stackalloc Range[4];
        if (!SplitFields(rest, fields))
        {
            return Invalid("a v1 header without exactly four fields after the protocol, one space apart", out error);
        }

        IPAddress? source = ParseAddress(rest[fields[0]], family);
        IPAddress? destination = ParseAddress(rest[fields[1]], family);
        if (source is null || destination is null)
        {
            return Invalid(family == AddressFamily.InterNetwork
                ? "a v1 TCP4 header with an address that is not a dotted quad without leading zeros"
                : "a v1 TCP6 header with an address that is not IPv6", out error);
        }

        int sourcePort = ParsePort(rest[fields[2]]);
        int destinationPort = ParsePort(rest[fields[3]]);
        if (sourcePort < 0 || destinationPort < 0)
        {
            return Invalid("a v1 header with a port that is not a number from 0 to 65535 without leading zeros", out error);
        }

        header.Source = new IPEndPoint(source, sourcePort);
        header.Destination = new IPEndPoint(destination, destinationPort);
        return ProxyHeaderStatus.Complete;
    }

    private static ProxyHeaderStatus ParseV2(ReadOnlySpan<byte> data, ref ProxyHeader header, out string? error)
    {
        error = null;
        int prefix = Math.Min(data.Length, V2Signature.Length);
        if (!data[..prefix].SequenceEqual(V2Signature[..prefix]))
        {
            return Invalid("not a PROXY protocol header (the v2 signature does not match)", out error);
        }

        if (data.Length <= 12)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        // The 13th byte: version (must be 2) and command (LOCAL or PROXY; "Receivers must drop connections presenting
        // unexpected values here").
        int version = data[12] >> 4;
        int command = data[12] & 0xF;
        if (version != 2)
        {
            return Invalid($"a v2 header with version {version}", out error);
        }

        if (command is not (CommandLocal or CommandProxy))
        {
            return Invalid($"a v2 header with command {command}", out error);
        }

        if (data.Length <= 13)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        // The 14th byte: address family (UNSPEC, INET, INET6, UNIX) and protocol (UNSPEC, STREAM, DGRAM); other values
        // "must be rejected as invalid by receivers".
        int family = data[13] >> 4;
        int protocol = data[13] & 0xF;
        if (family > FamilyUnix)
        {
            return Invalid($"a v2 header with address family {family}", out error);
        }

        if (protocol > 2)
        {
            return Invalid($"a v2 header with transport protocol {protocol}", out error);
        }

        if (data.Length < V2FixedLength)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        int total = V2FixedLength + BinaryPrimitives.ReadUInt16BigEndian(data[14..]);
        if (data.Length < total)
        {
            return ProxyHeaderStatus.NeedMore;
        }

        int addressLength = protocol == 0 ? 0 : family switch
        {
            FamilyInet => 12,
            FamilyInet6 => 36,
            FamilyUnix => 216,
            _ => 0,
        };
        header.Version = 2;
        header.Length = total;
        if (command == CommandLocal)
        {
            // LOCAL: "the receiver must accept this connection as valid and must use the real connection endpoints and
            // discard the protocol block including the family which is ignored", skipping the length's bytes ("must not
            // assume zero is presented for LOCAL connections"). TLVs a sender appends are exposed when they are
            // well-formed, and otherwise discarded with the rest of the block.
            header.Command = ProxyProtocolCommand.Local;
            if (total - V2FixedLength >= addressLength && CheckTlvs(data[..total], V2FixedLength + addressLength, out _))
            {
                header.TlvOffset = V2FixedLength + addressLength;
                header.TlvLength = total - header.TlvOffset;
            }

            return ProxyHeaderStatus.Complete;
        }

        // PROXY: the length must cover the address block of the family it announces.
        if (total - V2FixedLength < addressLength)
        {
            return Invalid($"a v2 header whose length {total - V2FixedLength} is too short for its {addressLength}-byte address block", out error);
        }

        header.Command = ProxyProtocolCommand.Proxy;

        // TCP over IPv4 or IPv6 is mapped; other valid combinations (UDP, AF_UNIX, UNSPEC) fall back to the real
        // endpoints, as the specification allows a receiver that does not implement them.
        if (protocol == ProtocolStream && family is FamilyInet or FamilyInet6)
        {
            ReadOnlySpan<byte> block = data.Slice(V2FixedLength, addressLength);
            int size = family == FamilyInet ? 4 : 16;
            header.Source = new IPEndPoint(new IPAddress(block[..size]), BinaryPrimitives.ReadUInt16BigEndian(block[(2 * size)..]));
            header.Destination = new IPEndPoint(new IPAddress(block.Slice(size, size)), BinaryPrimitives.ReadUInt16BigEndian(block[(2 * size + 2)..]));
        }

        header.TlvOffset = V2FixedLength + addressLength;
        header.TlvLength = total - header.TlvOffset;
        return CheckTlvs(data[..total], header.TlvOffset, out error) ? ProxyHeaderStatus.Complete : ProxyHeaderStatus.Invalid;
    }

    /// <summary>The TLVs fill the rest of the header exactly, each within it; the registered ones have their layout.</summary>
    private static bool CheckTlvs(ReadOnlySpan<byte> header, int offset, out string? error)
    {
        error = null;
        while (offset < header.Length)
        {
            if (header.Length - offset < 3)
            {
                error = "a v2 header that ends inside a TLV's type and length";
                return false;
            }

            byte type = header[offset];
            int length = BinaryPrimitives.ReadUInt16BigEndian(header[(offset + 1)..]);
            int valueOffset = offset + 3;
            if (header.Length - valueOffset < length)
            {
                error = $"a v2 header whose TLV of type 0x{type:X2} runs past the header's length";
                return false;
            }

            ReadOnlySpan<byte> value = header.Slice(valueOffset, length);
            switch (type)
            {
                case ProxyProtocolTlvType.Crc32C when length != 4:
                    error = "a v2 header with a CRC32C TLV that is not 4 bytes";
                    return false;
                case ProxyProtocolTlvType.Crc32C when Crc32C(header, valueOffset) != BinaryPrimitives.ReadUInt32BigEndian(value):
                    // Section 2.2.3: "If it is not, the receiver MUST treat the TCP connection providing the header as invalid."
                    error = "a v2 header whose CRC32C checksum does not match";
                    return false;
                case ProxyProtocolTlvType.UniqueId when length > MaxUniqueIdLength:
                    error = "a v2 header with a unique id longer than 128 bytes";
                    return false;
                case ProxyProtocolTlvType.Ssl when !CheckSsl(value):
                    error = "a v2 header with a malformed SSL TLV";
                    return false;
            }

            offset = valueOffset + length;
        }

        return true;
    }

    /// <summary>Section 2.2.6: client (1 byte), verify (4 bytes), then sub-TLVs that fill the value exactly.</summary>
    private static bool CheckSsl(ReadOnlySpan<byte> value)
    {
        if (value.Length < 5)
        {
            return false;
        }

        int offset = 5;
        while (offset < value.Length)
        {
            if (value.Length - offset < 3)
            {
                return false;
            }

            offset += 3 + BinaryPrimitives.ReadUInt16BigEndian(value[(offset + 1)..]);
        }

        return offset == value.Length;
    }

    /// <summary>RFC 4960 appendix B's CRC32c of the header with the checksum's own 4 bytes taken as zero.</summary>
    private static uint Crc32C(ReadOnlySpan<byte> header, int checksumOffset)
    {
        uint crc = uint.MaxValue;
        for (int i = 0; i < header.Length; i++)
        {
            bool inChecksum = i >= checksumOffset && i < checksumOffset + 4;
            crc = BitOperations.Crc32C(crc, inChecksum ? (byte)0 : header[i]);
        }

        return ~crc;
    }

    /// <summary>Exactly <c>fields.Length</c> non-empty fields separated by single spaces.</summary>
    private static bool SplitFields(ReadOnlySpan<byte> text, Span<Range> fields)
    {
        int start = 0;
        for (int i = 0; i < fields.Length; i++)
        {
            int space = text[start..].IndexOf((byte)' ');
            int end = space < 0 ? text.Length : start + space;
            if (end == start || (space < 0) != (i == fields.Length - 1))
            {
                return false;
            }

            fields[i] = start..end;
            start = end + 1;
        }

        return true;
    }

    private static IPAddress? ParseAddress(ReadOnlySpan<byte> text, AddressFamily family)
        => family == AddressFamily.InterNetwork ? ParseIPv4(text) : ParseIPv6(text);

    /// <summary>Section 2.1: exactly 4 decimal numbers 0-255 separated by single dots, no leading zeros (no octal,
    /// no shortened forms: IPAddress.Parse would take "10.1" and "010.0.0.1").</summary>
    private static IPAddress? ParseIPv4(ReadOnlySpan<byte> text)
    {
        Span<byte> bytes = stackalloc byte[4];
        int part = 0;
        int value = -1;
        int digits = 0;
        foreach (byte c in text)
        {
            if (c == (byte)'.')
            {
                if (digits == 0 || part == 3)
                {
                    return null;
                }

                bytes[part++] = (byte)value;
                value = -1;
                digits = 0;
                continue;
            }

            if (c is < (byte)'0' or > (byte)'9' || (digits == 1 && value == 0) || digits == 3)
            {
                return null;
            }

            value = (value < 0 ? 0 : value * 10) + (c - '0');
            digits++;
            if (value > 255)
            {
                return null;
            }
        }

        if (part != 3 || digits == 0)
        {
            return null;
        }

        bytes[3] = (byte)value;
        return new IPAddress(bytes);
    }

    /// <summary>Hex groups and colons (and a dotted tail, as inet_ntop writes IPv4-mapped addresses); no zone id,
    /// no brackets.</summary>
    private static IPAddress? ParseIPv6(ReadOnlySpan<byte> text)
    {
        if (text.Length is < 2 or > 45 || !text.Contains((byte)':'))
        {
            return null;
        }

        Span<char> chars = stackalloc char[text.Length];
        for (int i = 0; i < text.Length; i++)
        {
            byte c = text[i];
            if (!char.IsAsciiHexDigit((char)c) && c is not (byte)':' and not (byte)'.')
            {
                return null;
            }

            chars[i] = (char)c;
        }

        return IPAddress.TryParse(chars, out IPAddress? address) && address.AddressFamily == AddressFamily.InterNetworkV6 ? address : null;
    }

    /// <summary>A decimal 0-65535 without leading zeros; -1 otherwise.</summary>
    private static int ParsePort(ReadOnlySpan<byte> text)
    {
        if (text.Length is 0 or > 5 || (text.Length > 1 && text[0] == (byte)'0'))
        {
            return -1;
        }

        int value = 0;
        foreach (byte c in text)
        {
            if (c is < (byte)'0' or > (byte)'9')
            {
                return -1;
            }

            value = value * 10 + (c - '0');
        }

        return value <= 65535 ? value : -1;
    }

    private static ProxyHeaderStatus Invalid(string reason, out string? error)
    {
        error = reason;
        return ProxyHeaderStatus.Invalid;
    }
}

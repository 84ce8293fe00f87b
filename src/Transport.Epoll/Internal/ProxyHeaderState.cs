using System.Buffers.Binary;
using System.Net;

namespace Transport.Epoll.Internal;

/// <summary>
/// A connection's PROXY protocol header: while it arrives, the bytes of a header split over several reads (rare: the
/// specification asks senders to send it at once, and a header that arrives whole is parsed in the loop's receive
/// buffer without a copy); once parsed, what it said, as the connection's <see cref="IProxyProtocolFeature"/>. Only
/// the connection's loop touches it until the connection is handed to Kestrel, and it is read-only after that.
/// </summary>
internal sealed class ProxyHeaderState : IProxyProtocolFeature
{
    private byte[]? _partial;
    private int _count;

    public ProxyHeaderState(ProxyProtocolEndpoint endpoint, EpollConnectionListener listener, EpollConnection connection)
    {
        Endpoint = endpoint;
        Listener = listener;
        Connection = connection;
    }

    /// <summary>The connection while it waits for its header (the loop's deadline list reaches it through this); null
    /// after, so that nothing but the connection itself keeps it alive.</summary>
    public EpollConnection? Connection { get; private set; }

    /// <summary>Links in the loop's list of connections waiting for their header (EpollLoop.ProxyHeaders.cs).</summary>
    public ProxyHeaderState? NextAwaiting { get; set; }

    public ProxyHeaderState? PreviousAwaiting { get; set; }

    /// <summary>When the header must be complete, in the loop's <see cref="EpollLoop.Now"/> clock.</summary>
    public long Deadline { get; set; }

    public ProxyProtocolEndpoint Endpoint { get; }

    /// <summary>Where the connection goes once its header is parsed.</summary>
    public EpollConnectionListener Listener { get; }

    /// <summary>Until the header is complete, or the connection closed without one.</summary>
    public bool Pending { get; private set; } = true;

    /// <summary>The header was parsed and the connection handed over: the feature's values are set.</summary>
    public bool Complete { get; private set; }

    public int Version { get; private set; }

    public ProxyProtocolCommand Command { get; private set; }

    public IPEndPoint? SourceEndPoint { get; private set; }

    public IPEndPoint? DestinationEndPoint { get; private set; }

    public IReadOnlyList<ProxyProtocolTlv> Tlvs { get; private set; } = [];

    /// <summary>
    /// Takes the header's bytes from <paramref name="data"/> (a read's bytes). <paramref name="consumed"/> says how many
    /// belonged to the header: the rest is the application's. Never takes more than the header can still need, so the
    /// application's bytes are never copied here (a v1 line's last read excepted, given back through
    /// <paramref name="consumed"/>).
    /// </summary>
    public ProxyHeaderStatus Feed(ReadOnlySpan<byte> data, out int consumed, out string? error)
    {
        ProxyHeader header;
        ProxyHeaderStatus status;
        if (_count == 0)
        {
            // The usual case: the whole header in one read, parsed where it lies.
            status = ProxyHeaderParser.Parse(data, out header, out error);
            if (status == ProxyHeaderStatus.Complete)
            {
                consumed = header.Length;
                Finish(data, header);
                return status;
            }

            if (status == ProxyHeaderStatus.Invalid)
            {
                consumed = 0;
                return status;
            }
        }

        int used = 0;
        while (true)
        {
            int max = ProxyHeaderParser.MaxLength(_partial.AsSpan(0, _count));
            int take = Math.Min(max - _count, data.Length - used);
            if (take > 0)
            {
                if (_partial is null || _partial.Length < _count + take)
                {
                    Array.Resize(ref _partial, Math.Max(max, ProxyHeaderParser.V2FixedLength));
                }

                data.Slice(used, take).CopyTo(_partial.AsSpan(_count));
                _count += take;
                used += take;
            }

            ReadOnlySpan<byte> buffered = _partial.AsSpan(0, _count);
            status = ProxyHeaderParser.Parse(buffered, out header, out error);
            if (status == ProxyHeaderStatus.Complete)
            {
                // Bytes past the header came from this read (an earlier one would have completed it): give them back.
                consumed = used - (_count - header.Length);
                Finish(buffered, header);
                _partial = null;
                _count = 0;
                return status;
            }

            if (status == ProxyHeaderStatus.Invalid || take <= 0 || used == data.Length)
            {
                consumed = used;
                return status;
            }
        }
    }

    /// <summary>The connection closed before its header was complete: it was never handed over.</summary>
    public void Abandon()
    {
        Pending = false;
        _partial = null;
        Connection = null;
    }

    private void Finish(ReadOnlySpan<byte> data, in ProxyHeader header)
    {
        Pending = false;
        Connection = null;
        Complete = true;
        Version = header.Version;
        Command = header.Command;
        SourceEndPoint = header.Source;
        DestinationEndPoint = header.Destination;
        if (header.TlvLength > 0)
        {
            Tlvs = ReadTlvs(data.Slice(header.TlvOffset, header.TlvLength).ToArray());
        }
    }

    /// <summary>The parser checked the layout; this only slices the copy (one array for every value).</summary>
    private static ProxyProtocolTlv[] ReadTlvs(byte[] bytes)
    {
        var tlvs = new List<ProxyProtocolTlv>();
        int offset = 0;
        while (offset < bytes.Length)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(offset + 1));
            tlvs.Add(new ProxyProtocolTlv(bytes[offset], new ReadOnlyMemory<byte>(bytes, offset + 3, length)));
            offset += 3 + length;
        }

        return tlvs.ToArray();
    }
}

using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Transport.Epoll.Interop;

/// <summary>
/// Converts between .NET endpoints and the kernel's <c>struct sockaddr_*</c>. <see cref="EndPoint.Serialize"/> already
/// produces the native layout on Linux (family in host order, then the address), so this only copies bytes.
/// </summary>
internal static class SockAddr
{
    /// <summary>Writes <paramref name="endPoint"/> as a sockaddr into <paramref name="destination"/>; returns its length.</summary>
    public static int Write(EndPoint endPoint, Span<byte> destination)
    {
        SocketAddress address = endPoint.Serialize();
        address.Buffer.Span[..address.Size].CopyTo(destination);
        return address.Size;
    }

    /// <summary>sa_family_t, in host byte order: little-endian on every Linux architecture .NET runs on.</summary>
    public static int Family(ReadOnlySpan<byte> sockaddr) => BinaryPrimitives.ReadUInt16LittleEndian(sockaddr);

    /// <summary>Reads a sockaddr filled by the kernel; <see langword="null"/> for an unnamed Unix socket peer.</summary>
    public static EndPoint? Read(ReadOnlySpan<byte> sockaddr)
    {
        if (sockaddr.Length < 2)
        {
            return null;
        }

        AddressFamily family = Family(sockaddr) switch
        {
            Libc.AF_INET => AddressFamily.InterNetwork,
            Libc.AF_INET6 => AddressFamily.InterNetworkV6,
            Libc.AF_UNIX => AddressFamily.Unix,
            _ => AddressFamily.Unknown,
        };

        if (family == AddressFamily.Unknown || (family == AddressFamily.Unix && sockaddr.Length <= 2))
        {
            return null;
        }

        var address = new SocketAddress(family, sockaddr.Length);
        sockaddr.CopyTo(address.Buffer.Span);
        if (family == AddressFamily.Unix)
        {
            return new UnixDomainSocketEndPoint("x").Create(address);
        }

        return new IPEndPoint(IPAddress.Any, 0).Create(address);
    }

    /// <summary>getsockname(2) as an endpoint, or <see langword="null"/> when the call fails.</summary>
    public static unsafe EndPoint? LocalOf(int fd)
    {
        byte* buffer = stackalloc byte[Libc.SockAddrStorageSize];
        int length = Libc.SockAddrStorageSize;
        return Libc.getsockname(fd, buffer, &length) == 0 ? Read(new ReadOnlySpan<byte>(buffer, length)) : null;
    }
}

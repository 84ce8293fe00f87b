using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Raw socket client helpers; every call is bounded by a timeout.</summary>
public static class Client
{
    /// <summary>Connects a new socket to <paramref name="endPoint"/> (TCP or Unix), bounded by <see cref="Timeouts.Default"/>.</summary>
    public static async Task<Socket> ConnectAsync(EndPoint endPoint, Action<Socket>? configure = null, TimeSpan? timeout = null)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            configure?.Invoke(socket);
            using var cts = Timeouts.Cts(timeout);
            await socket.ConnectAsync(endPoint, cts.Token);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Sends every byte of <paramref name="data"/>, bounded by a timeout.</summary>
    public static async Task SendAllAsync(this Socket socket, ReadOnlyMemory<byte> data, TimeSpan? timeout = null)
    {
        using var cts = Timeouts.Cts(timeout);
        while (!data.IsEmpty)
        {
            int sent = await socket.SendAsync(data, SocketFlags.None, cts.Token);
            data = data[sent..];
        }
    }

    /// <summary>Sends an ASCII string.</summary>
    public static Task SendAllAsync(this Socket socket, string ascii, TimeSpan? timeout = null) =>
        socket.SendAllAsync(Encoding.ASCII.GetBytes(ascii), timeout);

    /// <summary>One receive, bounded by a timeout: the number of bytes read, 0 at EOF.</summary>
    public static async Task<int> ReceiveOnceAsync(this Socket socket, Memory<byte> buffer, TimeSpan? timeout = null)
    {
        using var cts = Timeouts.Cts(timeout);
        return await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
    }

    /// <summary>
    /// Reads up to a '\n' and returns the ASCII line without it; fails on EOF or timeout. One byte per receive, so
    /// nothing after the line is consumed: callers go on to read the bytes that follow it.
    /// </summary>
    public static async Task<string> ReceiveLineAsync(this Socket socket, TimeSpan? timeout = null)
    {
        var line = new List<byte>();
        var one = new byte[1];
        while (true)
        {
            if (await socket.ReceiveOnceAsync(one, timeout) == 0)
            {
                throw new EndOfStreamException("EOF before the end of the line: " + Encoding.ASCII.GetString(line.ToArray()));
            }

            if (one[0] == (byte)'\n')
            {
                return Encoding.ASCII.GetString(line.ToArray());
            }

            line.Add(one[0]);
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes; fails on EOF or timeout.</summary>
    public static async Task<byte[]> ReceiveExactlyAsync(this Socket socket, int count, TimeSpan? timeout = null)
    {
        var buffer = new byte[count];
        int read = 0;
        using var cts = Timeouts.Cts(timeout);
        while (read < count)
        {
            int n;
            try
            {
                n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, cts.Token);
            }
            catch (OperationCanceledException e) when (cts.IsCancellationRequested)
            {
                throw new PartialReceiveException(buffer[..read], count, e);
            }

            if (n == 0)
            {
                throw new EndOfStreamException($"EOF after {read} of {count} bytes.");
            }

            read += n;
        }

        return buffer;
    }

    /// <summary>Reads until the peer's FIN (receive returns 0); fails if more than <paramref name="maxBytes"/> arrive or on timeout.</summary>
    public static async Task<byte[]> ReceiveToEndAsync(this Socket socket, int maxBytes = 64 * 1024 * 1024, TimeSpan? timeout = null)
    {
        var result = new MemoryStream();
        var buffer = new byte[64 * 1024];
        using var cts = Timeouts.Cts(timeout);
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            if (n == 0)
            {
                return result.ToArray();
            }

            result.Write(buffer, 0, n);
            if (result.Length > maxBytes)
            {
                throw new InvalidOperationException($"More than {maxBytes} bytes before EOF.");
            }
        }
    }

    /// <summary>Closes with SO_LINGER {on, 0}: the kernel sends a RST instead of a FIN.</summary>
    public static void Reset(this Socket socket)
    {
        socket.LingerState = new LingerOption(true, 0);
        socket.Close();
    }

    /// <summary>Deterministic pseudo-random bytes.</summary>
    public static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public static string Sha256(ReadOnlySpan<byte> data) => Convert.ToHexString(SHA256.HashData(data));
}

/// <summary>A receive that timed out before all the bytes it waited for came: what did come, for the failure message.</summary>
public sealed class PartialReceiveException(byte[] received, int expected, Exception inner)
    : TimeoutException($"Timed out after {received.Length} of {expected} bytes.", inner)
{
    public byte[] Received { get; } = received;
}

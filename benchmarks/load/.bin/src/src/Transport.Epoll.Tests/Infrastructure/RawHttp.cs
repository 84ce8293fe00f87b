using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>An HTTP/1.1 response as read off a raw socket.</summary>
public sealed record RawHttpResponse(int StatusCode, IReadOnlyDictionary<string, string> Headers, byte[] Body)
{
    public string BodyText => Encoding.UTF8.GetString(Body);
}

/// <summary>
/// Reads HTTP/1.1 responses (Content-Length or chunked bodies) from a raw socket, keeping bytes that belong to the next
/// response, so pipelined responses can be read one after another. Every read is bounded by a timeout.
/// </summary>
public sealed class RawHttpReader(Socket socket, TimeSpan? timeout = null)
{
    private readonly byte[] _chunk = new byte[16 * 1024];
    private readonly TimeSpan _timeout = timeout ?? Timeouts.Default;
    private byte[] _buffer = new byte[16 * 1024];
    private int _start;
    private int _end;

    public static string Get(string path, string host = "localhost", bool close = false) =>
        $"GET {path} HTTP/1.1\r\nHost: {host}\r\n{(close ? "Connection: close\r\n" : "")}\r\n";

    public async Task<RawHttpResponse> ReadResponseAsync()
    {
        string statusLine = await ReadLineAsync();
        string[] parts = statusLine.Split(' ', 3);
        if (parts.Length < 2 || !parts[0].StartsWith("HTTP/1.", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"Not an HTTP/1.x status line: '{statusLine}'.");
        }

        int status = int.Parse(parts[1], CultureInfo.InvariantCulture);
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        while (true)
        {
            string line = await ReadLineAsync();
            if (line.Length == 0)
            {
                break;
            }

            int colon = line.IndexOf(':', StringComparison.Ordinal);
            headers[line[..colon].Trim()] = line[(colon + 1)..].Trim();
        }

        byte[] body;
        if (headers.TryGetValue("Transfer-Encoding", out string? te) && te.Contains("chunked", StringComparison.OrdinalIgnoreCase))
        {
            var ms = new MemoryStream();
            while (true)
            {
                string sizeLine = await ReadLineAsync();
                int size = int.Parse(sizeLine.Split(';')[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                if (size == 0)
                {
                    while ((await ReadLineAsync()).Length != 0)
                    {
                        // Trailers.
                    }

                    break;
                }

                ms.Write(await ReadExactlyAsync(size));
                if ((await ReadLineAsync()).Length != 0)
                {
                    throw new InvalidDataException("Chunk not followed by CRLF.");
                }
            }

            body = ms.ToArray();
        }
        else if (headers.TryGetValue("Content-Length", out string? cl))
        {
            body = await ReadExactlyAsync(int.Parse(cl, CultureInfo.InvariantCulture));
        }
        else
        {
            body = [];
        }

        return new RawHttpResponse(status, headers, body);
    }

    private async Task<string> ReadLineAsync()
    {
        while (true)
        {
            int lf = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
            if (lf >= 0)
            {
                int length = lf - _start;
                if (length > 0 && _buffer[lf - 1] == '\r')
                {
                    length--;
                }

                string line = Encoding.ASCII.GetString(_buffer, _start, length);
                _start = lf + 1;
                return line;
            }

            await FillAsync();
        }
    }

    private async Task<byte[]> ReadExactlyAsync(int count)
    {
        while (_end - _start < count)
        {
            await FillAsync();
        }

        byte[] result = _buffer.AsSpan(_start, count).ToArray();
        _start += count;
        return result;
    }

    private async Task FillAsync()
    {
        using var cts = new CancellationTokenSource(_timeout);
        int n = await socket.ReceiveAsync(_chunk, SocketFlags.None, cts.Token);
        if (n == 0)
        {
            throw new EndOfStreamException("The server closed the connection in the middle of a response.");
        }

        if (_start > 0)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }

        if (_end + n > _buffer.Length)
        {
            Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _end + n));
        }

        Buffer.BlockCopy(_chunk, 0, _buffer, _end, n);
        _end += n;
    }
}

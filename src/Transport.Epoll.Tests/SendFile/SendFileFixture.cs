using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>Test files with known contents, made once per test class in a folder of their own and removed after.</summary>
public sealed class TestFiles : IDisposable
{
    public TestFiles()
    {
        Folder = Directory.CreateTempSubdirectory("epoll-sendfile-").FullName;
    }

    public string Folder { get; }

    /// <summary>A file of <paramref name="size"/> pseudo-random bytes (deterministic for a size).</summary>
    public string Create(long size, string? name = null)
    {
        string path = Path.Combine(Folder, name ?? $"file-{size}.bin");
        if (File.Exists(path))
        {
            return path;
        }

        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        var random = new Random((int)(size % int.MaxValue) + 17);
        var chunk = new byte[1024 * 1024];
        long left = size;
        while (left > 0)
        {
            random.NextBytes(chunk);
            int n = (int)Math.Min(chunk.Length, left);
            stream.Write(chunk, 0, n);
            left -= n;
        }

        return path;
    }

    /// <summary>SHA-256 of <paramref name="count"/> bytes of the file from <paramref name="offset"/>.</summary>
    public static string Hash(string path, long offset, long count)
    {
        using var stream = File.OpenRead(path);
        stream.Position = offset;
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        var buffer = new byte[1024 * 1024];
        while (count > 0)
        {
            int n = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, count));
            if (n == 0)
            {
                throw new EndOfStreamException();
            }

            sha.AppendData(buffer, 0, n);
            count -= n;
        }

        return Convert.ToHexString(sha.GetHashAndReset());
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
            // A file still open by a server that failed to stop: the OS temp cleaner gets it.
        }
    }
}

/// <summary>
/// A tiny file protocol for raw connections: the client sends "path offset count\n"; the server writes "BEGIN\n"
/// (advanced, not flushed: it must still go first), sends the range with the feature, writes "END\n". One line, one
/// range, as many as the client asks on one connection.
/// </summary>
public static class FileProtocol
{
    public static readonly byte[] Begin = "BEGIN\n"u8.ToArray();
    public static readonly byte[] End = "END\n"u8.ToArray();

    public static async Task ServeAsync(ConnectionContext connection, Func<ConnectionContext, string, long, long, Task>? send = null)
    {
        send ??= SendWithFeatureAsync;
        PipeReader input = connection.Transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            ReadOnlySequence<byte> buffer = result.Buffer;
            SequencePosition? newline;
            while ((newline = buffer.PositionOf((byte)'\n')) is { } position)
            {
                string line = Encoding.ASCII.GetString(buffer.Slice(0, position).ToArray());
                buffer = buffer.Slice(buffer.GetPosition(1, position));
                string[] parts = line.Split(' ');
                connection.Transport.Output.Write(Begin);
                await send(connection, parts[0], long.Parse(parts[1]), long.Parse(parts[2]));
                connection.Transport.Output.Write(End);
                await connection.Transport.Output.FlushAsync();
            }

            input.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await connection.Transport.Output.CompleteAsync();
    }

    public static async Task SendWithFeatureAsync(ConnectionContext connection, string path, long offset, long count)
    {
        var feature = connection.Features.Get<IConnectionSendFileFeature>()
            ?? throw new InvalidOperationException("The connection has no IConnectionSendFileFeature.");
        using SafeFileHandle file = File.OpenHandle(path);
        await feature.SendFileAsync(file, offset, count);
    }
}

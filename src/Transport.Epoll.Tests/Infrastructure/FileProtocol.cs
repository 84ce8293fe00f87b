using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll.Tests.Infrastructure;

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

using System.Buffers;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll;

namespace WebApp;

/// <summary>
/// A tiny raw file protocol on <c>--FilePort</c>, to show <see cref="IConnectionSendFileFeature"/> to raw TCP users.
/// The client sends lines: <c>name</c> for a whole file, or <c>name offset count</c> for a range, of the sample's
/// files folder. Each gets <c>OK length\n</c> and the bytes, or <c>ERR reason\n</c>. Try it:
/// <c>python3 -c "import socket; s=socket.create_connection(('127.0.0.1', 5002)); s.sendall(b'hello.txt\\n'); print(s.recv(4096))"</c>. On the epoll transport the bytes go out with sendfile(2);
/// on others they are copied through the pipe.
/// </summary>
public sealed class FileConnectionHandler(IHostApplicationLifetime lifetime) : ConnectionHandler
{
    private const int MaxLineLength = 1024;

    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        using CancellationTokenRegistration stopping = lifetime.ApplicationStopping.Register(
            static state => ((PipeReader)state!).CancelPendingRead(), input);
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                while (buffer.PositionOf((byte)'\n') is { } newline)
                {
                    string line = Encoding.ASCII.GetString(buffer.Slice(0, newline)).TrimEnd('\r');
                    buffer = buffer.Slice(buffer.GetPosition(1, newline));
                    await ServeLineAsync(connection, line);
                }

                input.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted || result.IsCanceled || buffer.Length > MaxLineLength)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException or IOException or OperationCanceledException)
        {
            // The peer went away mid-file, or the file failed (the transport aborted the connection): nothing to say.
        }

        await input.CompleteAsync();
        await connection.Transport.Output.CompleteAsync();
    }

    private static async Task ServeLineAsync(ConnectionContext connection, string line)
    {
        PipeWriter output = connection.Transport.Output;
        string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        string? path = parts.Length is 1 or 3 ? SampleEndpoints.ResolveFile(parts[0]) : null;
        if (path is null)
        {
            await output.WriteAsync(Encoding.ASCII.GetBytes("ERR no such file (send: name [offset count])\n"));
            return;
        }

        using SafeFileHandle file = File.OpenHandle(path);
        long length = RandomAccess.GetLength(file);
        long offset = 0;
        long count = length;
        if (parts.Length == 3
            && (!long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out offset)
                || !long.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out count)
                || offset > length || count > length - offset))
        {
            await output.WriteAsync(Encoding.ASCII.GetBytes($"ERR the range is outside the file ({length} bytes)\n"));
            return;
        }

        // The header is advanced, not flushed: the feature sends it ahead of the file.
        output.Write(Encoding.ASCII.GetBytes($"OK {count}\n"));
        if (connection.Features.Get<IConnectionSendFileFeature>() is { } sendFile)
        {
            await sendFile.SendFileAsync(file, offset, count);
            return;
        }

        // Another transport: copy through the pipe.
        while (count > 0)
        {
            Memory<byte> memory = output.GetMemory(16 * 1024);
            int read = await RandomAccess.ReadAsync(file, memory[..(int)Math.Min(memory.Length, count)], offset);
            if (read == 0)
            {
                throw new IOException("The file shrank.");
            }

            output.Advance(read);
            offset += read;
            count -= read;
            await output.FlushAsync();
        }
    }
}

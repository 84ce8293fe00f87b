using System.Buffers;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;

namespace WebApp;

/// <summary>
/// The chat port (<c>--ChatPort</c>): raw TCP, one <c>\n</c>-terminated UTF-8 line per message.
/// <list type="bullet">
/// <item>On connect the server sends <c>id &lt;hex id&gt;</c>, before anything else.</item>
/// <item><c>say &lt;text&gt;</c>: <c>&lt;hex sender id&gt;: &lt;text&gt;</c> goes to every other connection of the port.</item>
/// <item><c>to &lt;hex id&gt; &lt;text&gt;</c>: the same line to that connection only, written by id from this handler;
/// the sender gets <c>ok</c>, or <c>gone</c> when the id is not connected.</item>
/// <item><c>kick &lt;hex id&gt;</c>: closes that connection (after what was written to it); <c>ok</c> or <c>gone</c>.</item>
/// <item><c>who</c>: <c>ids &lt;hex id&gt; ...</c>, the connections of the port.</item>
/// <item>Anything else: <c>error unknown command</c>. A line longer than 4 KiB closes the connection.</item>
/// </list>
/// On the epoll transport the other connections are addressed by id (<see cref="EpollChatRoom"/>); on Sockets through
/// a dictionary of their pipes under a lock (<see cref="SocketsChatRoom"/>).
/// </summary>
public sealed class ChatConnectionHandler(ChatRoom room, IHostApplicationLifetime lifetime) : ConnectionHandler
{
    private const int MaxLine = 4096;

    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        using CancellationTokenRegistration stopping = lifetime.ApplicationStopping.Register(
            static state => ((PipeReader)state!).CancelPendingRead(), input);

        // The id line goes out first, and only once the others can reach the connection (so a client that read it may
        // at once be sent to, and every member listed by who has had its id line).
        ulong id = room.IdOf(connection);
        await room.JoinAsync(connection, Encoding.ASCII.GetBytes($"id {id:x}\n"));
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                while (TryReadLine(ref buffer, out ReadOnlySequence<byte> line))
                {
                    if (line.Length > MaxLine)
                    {
                        return;
                    }

                    await HandleAsync(id, Encoding.UTF8.GetString(line), output);
                }

                input.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted || result.IsCanceled || buffer.Length > MaxLine)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException or IOException or OperationCanceledException)
        {
            // The peer reset or the connection was aborted (kicked, stopped): nothing more to say.
        }
        finally
        {
            room.Leave(id);
            await input.CompleteAsync();
            await output.CompleteAsync();
        }
    }

    private async ValueTask HandleAsync(ulong id, string line, PipeWriter output)
    {
        CancellationToken stopping = lifetime.ApplicationStopping;
        line = line.TrimEnd('\r');
        string command = line.Split(' ', 2)[0];
        string rest = line.Length > command.Length ? line[(command.Length + 1)..] : string.Empty;
        switch (command)
        {
            case "say":
                await room.BroadcastAsync(id, Encoding.UTF8.GetBytes($"{id:x}: {rest}\n"), stopping);
                break;
            case "to":
            {
                string[] parts = rest.Split(' ', 2);
                bool sent = TryParseId(parts[0], out ulong target)
                    && await room.SendAsync(target, Encoding.UTF8.GetBytes($"{id:x}: {(parts.Length > 1 ? parts[1] : string.Empty)}\n"), stopping);
                await room.ReplyAsync(id, output, sent ? "ok\n"u8.ToArray() : "gone\n"u8.ToArray(), stopping);
                break;
            }

            case "kick":
                await room.ReplyAsync(id, output, TryParseId(rest, out ulong kicked) && room.Kick(kicked) ? "ok\n"u8.ToArray() : "gone\n"u8.ToArray(), stopping);
                break;
            case "who":
                await room.ReplyAsync(id, output, Encoding.ASCII.GetBytes("ids " + string.Join(' ', room.Members().Select(static m => m.ToString("x", CultureInfo.InvariantCulture))) + "\n"), stopping);
                break;
            default:
                await room.ReplyAsync(id, output, "error unknown command\n"u8.ToArray(), stopping);
                break;
        }
    }

    private static bool TryParseId(string text, out ulong id)
        => ulong.TryParse(text.Trim(), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out id);

    private static bool TryReadLine(ref ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> line)
    {
        SequencePosition? end = buffer.PositionOf((byte)'\n');
        if (end is null)
        {
            line = default;
            return false;
        }

        line = buffer.Slice(0, end.Value);
        buffer = buffer.Slice(buffer.GetPosition(1, end.Value));
        return true;
    }
}

using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Raw connection handlers shared by the tests.</summary>
public static class Handlers
{
    /// <summary>Echoes every byte; when Input completes, completes Output (the client that half-closes gets all its bytes back, then EOF).</summary>
    public static async Task EchoAsync(ConnectionContext connection)
    {
        var input = connection.Transport.Input;
        var output = connection.Transport.Output;
        while (true)
        {
            var result = await input.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                output.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            var flush = await output.FlushAsync();
            if (result.IsCompleted || result.IsCanceled || flush.IsCompleted)
            {
                break;
            }
        }

        await input.CompleteAsync();
        await output.CompleteAsync();
    }

    /// <summary>
    /// <see cref="EchoAsync"/> for tests whose clients reset: a peer's reset ends the connection quietly, as a real
    /// server's handler would take it (left to Kestrel, each one is logged as an unhandled exception).
    /// </summary>
    public static async Task EchoUntilResetAsync(ConnectionContext connection)
    {
        try
        {
            await EchoAsync(connection);
        }
        catch (ConnectionResetException)
        {
        }
    }

    /// <summary>Reads from <paramref name="input"/> until it completes, and returns every byte.</summary>
    public static async Task<byte[]> ReadToEndAsync(PipeReader input)
    {
        var all = new ArrayBufferWriter<byte>();
        while (true)
        {
            var result = await input.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                all.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return all.WrittenSpan.ToArray();
            }
        }
    }
}

/// <summary>The echo handler as a <see cref="ConnectionHandler"/> for <c>UseConnectionHandler&lt;T&gt;()</c>.</summary>
public sealed class EchoConnectionHandler : ConnectionHandler
{
    public override Task OnConnectedAsync(ConnectionContext connection) => Handlers.EchoAsync(connection);
}

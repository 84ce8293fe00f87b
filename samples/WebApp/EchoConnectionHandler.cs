using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;

namespace WebApp;

/// <summary>
/// A raw TCP echo: every byte received is written back. When the peer shuts down its sending side (FIN), the
/// handler completes its output once everything is echoed, so a half-closing client gets all its bytes back and then
/// end-of-stream. A reset or an abort ends the connection quietly. When the app shuts down, it stops reading and
/// completes its output (the client gets a FIN), so an idle echo client does not hold the shutdown for Kestrel's
/// whole shutdown timeout.
/// </summary>
public sealed class EchoConnectionHandler(IHostApplicationLifetime lifetime) : ConnectionHandler
{
    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        using CancellationTokenRegistration stopping = lifetime.ApplicationStopping.Register(
            static state => ((PipeReader)state!).CancelPendingRead(), input);
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                bool wrote = !buffer.IsEmpty;
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    output.Write(segment.Span);
                }

                input.AdvanceTo(buffer.End);

                if (wrote)
                {
                    FlushResult flush = await output.FlushAsync();
                    if (flush.IsCompleted || flush.IsCanceled)
                    {
                        break;
                    }
                }

                if (result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is ConnectionResetException or ConnectionAbortedException or IOException or OperationCanceledException)
        {
            // The peer reset or the connection was aborted: nothing left to echo, nobody to tell. Completing the
            // output with the exception would report an application failure (and log it) for an ordinary event.
        }

        await input.CompleteAsync();
        // Completing the output sends what is still buffered, then FIN.
        await output.CompleteAsync();
    }
}

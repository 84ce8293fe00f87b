using System.Net.WebSockets;

namespace WebApp;

/// <summary><c>/ws</c>: a WebSocket echo, so browsers and WebSocket clients can try the transport too.</summary>
internal static class SampleWebSockets
{
    /// <summary>Largest message echoed; a longer one closes the socket with MessageTooBig.</summary>
    private const int MaxMessageBytes = 64 * 1024;

    public static async Task Echo(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsync("/ws is a WebSocket endpoint: connect with a WebSocket client.\n");
            return;
        }

        using WebSocket socket = await context.WebSockets.AcceptWebSocketAsync();
        var buffer = new byte[MaxMessageBytes];
        CancellationToken aborted = context.RequestAborted;
        try
        {
            while (true)
            {
                int length = 0;
                ValueWebSocketReceiveResult received;
                do
                {
                    if (length == buffer.Length)
                    {
                        await socket.CloseAsync(WebSocketCloseStatus.MessageTooBig, $"messages are limited to {MaxMessageBytes} bytes", aborted);
                        return;
                    }

                    received = await socket.ReceiveAsync(buffer.AsMemory(length), aborted);
                    length += received.Count;
                }
                while (!received.EndOfMessage);

                if (received.MessageType == WebSocketMessageType.Close)
                {
                    await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, aborted);
                    return;
                }

                await socket.SendAsync(buffer.AsMemory(0, length), received.MessageType, endOfMessage: true, aborted);
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException)
        {
            // The client went away without a close handshake: nothing to answer.
        }
    }
}

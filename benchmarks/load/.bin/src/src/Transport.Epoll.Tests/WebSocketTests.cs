using System.Net.WebSockets;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class WebSocketTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task A_WebSocket_echoes_text_and_binary_messages_and_closes_cleanly(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);
        using var ws = new ClientWebSocket();
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{server.Port}/ws"), cts.Token);

        foreach (string text in new[] { "hello", "", new string('x', 10_000) })
        {
            await ws.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, endOfMessage: true, cts.Token);
            var (type, payload) = await ReceiveMessageAsync(ws, cts.Token);
            Assert.Equal(WebSocketMessageType.Text, type);
            Assert.Equal(text, Encoding.UTF8.GetString(payload));
        }

        byte[] binary = Client.RandomBytes(1024 * 1024, seed: 1);
        await ws.SendAsync(binary, WebSocketMessageType.Binary, endOfMessage: true, cts.Token);
        var (binaryType, echoed) = await ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Binary, binaryType);
        Assert.Equal(Client.Sha256(binary), Client.Sha256(echoed));

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
        Assert.Equal(WebSocketState.Closed, ws.State);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, ws.CloseStatus);
    }

    private static async Task<(WebSocketMessageType Type, byte[] Payload)> ReceiveMessageAsync(ClientWebSocket ws, CancellationToken token)
    {
        var message = new MemoryStream();
        var buffer = new byte[64 * 1024];
        while (true)
        {
            var result = await ws.ReceiveAsync(buffer, token);
            message.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return (result.MessageType, message.ToArray());
            }
        }
    }
}

using System.Net.WebSockets;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>The HTTP application most HTTP tests run.</summary>
public static class TestApp
{
    public const string Plaintext = "Hello, World!";

    public static void Map(WebApplication app)
    {
        app.UseWebSockets();

        app.MapGet("/plaintext", () => Results.Text(Plaintext, "text/plain"));

        // Tells which connection served the request and whether the epoll transport did.
        app.MapGet("/conn", (HttpContext ctx) =>
        {
            var epoll = ctx.Features.Get<IEpollConnectionFeature>();
            return Results.Text(
                $"id={ctx.Connection.Id};epoll={(epoll is null ? "none" : epoll.Id.ToString(System.Globalization.CultureInfo.InvariantCulture))};" +
                $"protocol={ctx.Request.Protocol};https={ctx.Request.IsHttps};remote={ctx.Connection.RemoteIpAddress}");
        });

        app.MapGet("/item/{i:int}", (int i) => Results.Text($"item {i}"));

        // n deterministic bytes (Client.RandomBytes(n, seed: n)), written in 16 KiB pieces.
        app.MapGet("/bytes/{n:int}", async (HttpContext ctx, int n) =>
        {
            byte[] data = Client.RandomBytes(n, seed: n);
            ctx.Response.ContentLength = n;
            for (int offset = 0; offset < n; offset += 16 * 1024)
            {
                await ctx.Response.BodyWriter.WriteAsync(data.AsMemory(offset, Math.Min(16 * 1024, n - offset)), ctx.RequestAborted);
            }
        });

        // Copies the request body to the response body through the pipes.
        app.MapPost("/echo", async (HttpContext ctx) =>
        {
            if (ctx.Request.ContentLength is { } length)
            {
                ctx.Response.ContentLength = length;
            }

            await ctx.Request.BodyReader.CopyToAsync(ctx.Response.BodyWriter, ctx.RequestAborted);
        });

        // The body's length and SHA-256, for uploads too big to echo conveniently.
        app.MapPost("/hash", async (HttpContext ctx) =>
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            long length = 0;
            var reader = ctx.Request.BodyReader;
            while (true)
            {
                var result = await reader.ReadAsync(ctx.RequestAborted);
                foreach (var segment in result.Buffer)
                {
                    sha.AppendData(segment.Span);
                    length += segment.Length;
                }

                reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }

            return Results.Text($"{length}:{Convert.ToHexString(sha.GetHashAndReset())}:{ctx.Request.Headers.TransferEncoding}");
        });

        app.Map("/ws", async (HttpContext ctx) =>
        {
            if (!ctx.WebSockets.IsWebSocketRequest)
            {
                ctx.Response.StatusCode = 400;
                return;
            }

            using var ws = await ctx.WebSockets.AcceptWebSocketAsync();
            var buffer = new byte[64 * 1024];
            while (true)
            {
                var result = await ws.ReceiveAsync(buffer, ctx.RequestAborted);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", ctx.RequestAborted);
                    return;
                }

                await ws.SendAsync(buffer.AsMemory(0, result.Count), result.MessageType, result.EndOfMessage, ctx.RequestAborted);
            }
        });
    }
}

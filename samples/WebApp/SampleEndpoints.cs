using System.Buffers;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;
using Transport.Epoll;

namespace WebApp;

/// <summary>
/// The HTTP endpoints of the sample's contract. <c>/plaintext</c> and <c>/json</c> are written TechEmpower style:
/// Content-Length set, preallocated bytes written to <c>Response.BodyWriter</c>, and no flush of their own, so Kestrel
/// sends pipelined responses together.
/// </summary>
internal static class SampleEndpoints
{
    private static readonly byte[] s_plaintextBody = "Hello, World!"u8.ToArray();

    // Serialized once at start-up: {"message":"Hello, World!"}.
    private static readonly byte[] s_jsonBody = JsonSerializer.SerializeToUtf8Bytes(new JsonMessage("Hello, World!"), SampleJsonContext.Default.JsonMessage);

    /// <summary>The folder <c>GET /files/{name}</c> and the raw file port serve from: <c>--Files</c>, else <c>content/</c>
    /// next to the binary.</summary>
    public static string ContentFolder { get; set; } = Path.Combine(AppContext.BaseDirectory, "content");

    /// <summary><c>GET /</c>: what the sample serves, for whoever opens it in a browser or with curl.</summary>
    public static string Landing(HttpContext context)
    {
        string transport = context.Features.Get<IEpollConnectionFeature>() is null ? "another transport" : "the epoll transport";
        return $$"""
            Transport.Epoll sample, served by {{transport}}.
              GET  /plaintext        Hello, World!
              GET  /json             {"message":"Hello, World!"}
              POST /echo             the request body, streamed back
              GET  /files/{name}     a file from the content folder (sendfile; Range and HEAD work)
              GET  /connection       what the transport says about this connection
              GET  /stats            the transport's metrics and the process's figures, as JSON
              GET  /slow?ms=N        answers after N ms
              GET  /ready            200 while serving, 503 once the sample is stopping (readiness)
              GET  /ws               a WebSocket echo
            """ + "\n";
    }

    /// <summary>
    /// <c>GET /ready</c>: a readiness probe for load balancers and orchestrators. 503 from the moment the host begins
    /// to stop (ApplicationStopping, before Kestrel unbinds), so a balancer that polls it stops sending new requests
    /// here while this instance drains (the response then also carries <c>Connection: close</c>: Draining.cs).
    /// </summary>
    public static IResult Ready(CancellationToken stopping)
    {
        if (stopping.IsCancellationRequested)
        {
            return Results.Text("draining\n", statusCode: StatusCodes.Status503ServiceUnavailable);
        }

        return Results.Text("ready\n");
    }

    public static Task Plaintext(HttpContext context)
    {
        HttpResponse response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/plain";
        response.ContentLength = s_plaintextBody.Length;
        response.BodyWriter.Write(s_plaintextBody);
        return Task.CompletedTask;
    }

    public static Task Json(HttpContext context)
    {
        HttpResponse response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/json";
        response.ContentLength = s_jsonBody.Length;
        response.BodyWriter.Write(s_jsonBody);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Streams the request body back as it arrives, whether it came with Content-Length or chunked. Nothing is
    /// buffered whole, so Kestrel's request body limit (30 MB by default) is lifted for this endpoint.
    /// </summary>
    public static async Task Echo(HttpContext context)
    {
        HttpRequest request = context.Request;
        HttpResponse response = context.Response;
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
        {
            limit.MaxRequestBodySize = null;
        }

        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = request.ContentType ?? "application/octet-stream";
        if (request.ContentLength is long length)
        {
            response.ContentLength = length;
        }

        try
        {
            await request.BodyReader.CopyToAsync(response.BodyWriter, context.RequestAborted);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away; Kestrel already knows.
        }
        catch (ConnectionResetException)
        {
            // The client reset the connection while its body was still arriving: it went away too, and there is
            // nobody to answer. Abort, so Kestrel neither logs an application error (event 13, on either transport)
            // nor checks the response's Content-Length against the bytes echoed so far.
            context.Abort();
        }
    }

    /// <summary>
    /// <c>GET /slow?ms=N</c>: answers <c>slept N ms</c> after waiting N milliseconds (0 to 60,000; default 1,000), for
    /// graceful-shutdown tests: a request in flight when the server is told to stop must still complete. The wait
    /// ends early only if the request is aborted (the client left, or the shutdown timeout passed), which is logged
    /// as a warning (event 1000).
    /// </summary>
    public static async Task Slow(HttpContext context)
    {
        int ms = 1000;
        if (context.Request.Query.TryGetValue("ms", out var value)
            && (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ms) || ms > 60_000))
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsync("ms: 0 to 60000\n", context.RequestAborted);
            return;
        }

        long started = Environment.TickCount64;
        try
        {
            await Task.Delay(ms, context.RequestAborted);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // Reported, not lost silently: graceful-shutdown tests look for this line.
            ILogger logger = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("WebApp");
            SampleLog.SlowRequestAborted(logger, ms, Environment.TickCount64 - started);
            return;
        }

        byte[] body = Encoding.ASCII.GetBytes($"slept {ms} ms\n");
        context.Response.ContentType = "text/plain";
        context.Response.ContentLength = body.Length;
        await context.Response.Body.WriteAsync(body, context.RequestAborted);
    }

    /// <summary>
    /// What the transport says about this request's connection: HTTP request features fall back to the connection's,
    /// so <see cref="IEpollConnectionFeature"/> is there on the epoll transport, and absent on Sockets.
    /// </summary>
    public static async Task<string> Connection(HttpContext context)
    {
        // First line: the client's address and port as the application sees them (behind a proxy with --ProxyProtocol,
        // the client's own, from the PROXY protocol header). Then what the transport says about the connection.
        ConnectionInfo connection = context.Connection;
        string remote = connection.RemoteIpAddress is { } ip ? new IPEndPoint(ip, connection.RemotePort).ToString() : "unknown";
        string details = context.Features.Get<IEpollConnectionFeature>() is { } epoll
            ? $"transport=epoll connection={connection.Id} id={epoll.Id:x16} fd={await epoll.WithSocketAsync(static fd => fd)} loop={epoll.LoopIndex}"
            : $"transport=other connection={connection.Id}";
        string proxy = context.Features.Get<IProxyProtocolFeature>() is { } header ? $" proxy-protocol=v{header.Version} {header.Command}" : string.Empty;
        return $"{remote}\n{details}{proxy}\n";
    }

    /// <summary>
    /// A file from <see cref="ContentFolder"/>, with Range support; with <c>UseEpollSendFile()</c> (Program.cs) it goes
    /// out with sendfile(2). A name that could leave the folder or names no file is a 404.
    /// </summary>
    public static IResult File(string name)
        => ResolveFile(name) is { } path
            ? Results.File(path, "application/octet-stream", enableRangeProcessing: true)
            : Results.NotFound();

    /// <summary>The path of <paramref name="name"/> in <see cref="ContentFolder"/>; null when the name could leave the
    /// folder ('/', '\', "..") or names no file.</summary>
    public static string? ResolveFile(string name)
    {
        if (string.IsNullOrEmpty(name)
            || name.Contains('/', StringComparison.Ordinal)
            || name.Contains('\\', StringComparison.Ordinal)
            || name.Contains("..", StringComparison.Ordinal)
            || name.Contains('\0', StringComparison.Ordinal))
        {
            return null;
        }

        string path = Path.Combine(ContentFolder, name);
        return System.IO.File.Exists(path) ? path : null;
    }
}

internal sealed record JsonMessage(string Message);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(JsonMessage))]
internal sealed partial class SampleJsonContext : JsonSerializerContext;

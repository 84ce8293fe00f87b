// The epoll transport's sample and benchmark target. See README.md ("The sample") for the endpoints and switches.
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Transport.Epoll;
using WebApp;

// Content root next to the binary: appsettings.json and content/ are found whatever the working directory is
// (dotnet run --project samples/WebApp from the repository root, or dotnet WebApp.dll from anywhere).
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });

SampleSettings settings;
try
{
    settings = SampleSettings.Read(builder.Configuration);
}
catch (SampleConfigurationException e)
{
    Console.Error.WriteLine($"WebApp: {e.Message}");
    return 2;
}

if (settings.Transport == SampleTransport.Epoll)
{
    if (!EpollTransport.IsSupported)
    {
        Console.Error.WriteLine($"WebApp: the epoll transport cannot run here: {EpollTransport.UnsupportedReason} Run with --Transport sockets instead.");
        return 3;
    }

    builder.WebHost.UseEpollTransport();
}

// Kestrel ignores --urls once code calls Listen*, and warns that it does: the sample adds the --urls endpoints itself
// (SampleSettings.Listen) and hands the host a url list with no address in it (an empty one would fall back to the
// command line's). The same for http_ports/https_ports, which SampleSettings read when there are no urls.
builder.WebHost.UseSetting(WebHostDefaults.ServerUrlsKey, ";");
builder.WebHost.UseSetting(WebHostDefaults.HttpPortsKey, string.Empty);
builder.WebHost.UseSetting(WebHostDefaults.HttpsPortsKey, string.Empty);

var httpEndpoints = new List<ListenOptions>();
ListenOptions? echoEndpoint = null;
ListenOptions? http2Endpoint = null;
ListenOptions? fileEndpoint = null;
ListenOptions? chatEndpoint = null;
if (settings.Files is not null)
{
    SampleEndpoints.ContentFolder = settings.Files;
}

if (settings.ShutdownTimeout is { } shutdownTimeout)
{
    // The drain window: after ApplicationStopping, Kestrel stops accepting, asks every connection to close
    // (Connection: close, GOAWAY, ConnectionClosedRequested) and waits this long before it aborts the rest.
    builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = shutdownTimeout);
}

if (settings.DrainDelay is { } drainDelay && drainDelay > TimeSpan.Zero)
{
    builder.Services.AddSingleton<IHostedService>(new DrainDelay(drainDelay));
}

builder.WebHost.ConfigureKestrel(kestrel =>
{
    httpEndpoints.Clear();
    if (SystemdActivation.ListenFdCount > 0)
    {
        // Started by systemd socket activation (deploy/systemd/): the HTTP endpoints are the listening fds it passed
        // (fd 3 on), not --urls. Kestrel's UseSystemd reads LISTEN_PID and LISTEN_FDS and calls ListenHandle for each.
        kestrel.UseSystemd(options =>
        {
            options.Protocols = HttpProtocols.Http1;
            settings.ApplyProxyProtocol(options);
            httpEndpoints.Add(options);
        });
    }
    else
    {
        foreach (var address in settings.Urls)
        {
            httpEndpoints.Add(SampleSettings.Listen(kestrel, address, settings.ApplyProxyProtocol));
        }
    }

    // The raw ports listen where HTTP does: only on loopback when every --urls address is loopback (the default,
    // http://localhost:5000), so a raw echo port is never opened to the network by surprise.
    if (settings.EchoEnabled)
    {
        settings.ListenRaw(kestrel, settings.EchoPort, options =>
        {
            settings.ApplyProxyProtocol(options);
            options.UseConnectionHandler<EchoConnectionHandler>();
            echoEndpoint = options;
        });
    }

    if (settings.FileEnabled)
    {
        settings.ListenRaw(kestrel, settings.FilePort, options =>
        {
            options.UseConnectionHandler<FileConnectionHandler>();
            fileEndpoint = options;
        });
    }

    if (settings.ChatEnabled)
    {
        settings.ListenRaw(kestrel, settings.ChatPort, options =>
        {
            options.UseConnectionHandler<ChatConnectionHandler>();
            chatEndpoint = options;
        });
    }

    if (settings.Http2Enabled)
    {
        settings.ListenRaw(kestrel, settings.Http2Port, options =>
        {
            options.Protocols = HttpProtocols.Http2;
            settings.ApplyProxyProtocol(options);
            http2Endpoint = options;
        });
    }
});

// The chat port's room: by id on epoll (IEpollConnections, registered by UseEpollTransport), a dictionary of pipes on Sockets.
if (settings.Transport == SampleTransport.Epoll)
{
    builder.Services.AddSingleton<ChatRoom>(static services => new EpollChatRoom(services.GetRequiredService<IEpollConnections>()));
}
else
{
    builder.Services.AddSingleton<ChatRoom, SocketsChatRoom>();
}

// The live counters of the transport's meter for GET /stats: the listener starts before the server, so it sees every
// connection from the first.
using var stats = new TransportStats();

// Building the host creates the server, and with it the transport, whose options are read and checked here.
WebApplication app;
try
{
    app = builder.Build();
}
catch (Exception e) when (StartupFailure.Describe(e) is { } message)
{
    Console.Error.WriteLine($"WebApp: {message}");
    return 2;
}

// Draining: Connection: close on every HTTP/1.x response once the app is stopping (Draining.cs).
app.Use(next => Draining.CloseWhenStopping(next, app.Lifetime.ApplicationStopping));

// Files (GET /files/{name}) go out with sendfile(2) on the epoll transport; a no-op on Sockets.
app.UseEpollSendFile();

app.MapGet("/", (Func<HttpContext, string>)SampleEndpoints.Landing);
app.MapGet("/plaintext", new RequestDelegate(SampleEndpoints.Plaintext));
app.MapGet("/json", new RequestDelegate(SampleEndpoints.Json));
app.MapPost("/echo", new RequestDelegate(SampleEndpoints.Echo));
app.MapMethods("/files/{name}", [HttpMethods.Get, HttpMethods.Head], (string name) => SampleEndpoints.File(name));
app.MapGet("/connection", (Func<HttpContext, Task<string>>)SampleEndpoints.Connection);
app.MapGet("/slow", new RequestDelegate(SampleEndpoints.Slow));
app.MapGet("/stats", new RequestDelegate(stats.WriteAsync));
app.MapGet("/ready", () => SampleEndpoints.Ready(app.Lifetime.ApplicationStopping));
// The WebSocket middleware only on /ws: anywhere else it would look up the upgrade features and add a handshake
// feature to every request, which the sample's hot endpoints (/plaintext, /json) do not need.
app.Map(new PathString("/ws"), static ws =>
{
    ws.UseWebSockets();
    ws.Run(SampleWebSockets.Echo);
});

app.Lifetime.ApplicationStarted.Register(() =>
{
    // One line, whatever the log level: which transport, and where (ports as bound, so port 0 shows its real port).
    string http = string.Join(' ', httpEndpoints.Select(static e => e.ToString()));
    string echo = echoEndpoint is null ? "off" : $"tcp://{echoEndpoint.EndPoint}";
    string h2c = http2Endpoint is null ? "off" : $"{http2Endpoint}";
    string files = fileEndpoint is null ? "off" : $"tcp://{fileEndpoint.EndPoint}";
    string chat = chatEndpoint is null ? "off" : $"tcp://{chatEndpoint.EndPoint}";
    string proxy = settings.ProxyProtocol ? $" proxy-protocol={string.Join(';', settings.ProxyProtocolTrusted)}" : string.Empty;
    Console.WriteLine($"WebApp: transport={settings.Transport.ToString().ToLowerInvariant()} http={http} echo={echo} h2c={h2c} files={files} chat={chat}{proxy}");
});

try
{
    await app.StartAsync();
}
catch (Exception e) when (StartupFailure.Describe(e) is { } message)
{
    // A mistake in how the sample was started (a bad option, a taken port): one line, not a crash with a stack trace.
    Console.Error.WriteLine($"WebApp: {message}");
    return 4;
}

await app.WaitForShutdownAsync();
return 0;

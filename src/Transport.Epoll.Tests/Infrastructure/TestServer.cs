using System.Collections.Concurrent;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>What <see cref="TestServer.StartAsync(TestServerOptions)"/> starts.</summary>
public sealed class TestServerOptions
{
    /// <summary><see cref="Transports.Epoll"/> or <see cref="Transports.Sockets"/>.</summary>
    public required string Transport { get; init; }

    /// <summary>Where to listen; 127.0.0.1 port 0 when empty.</summary>
    public IList<EndPoint> EndPoints { get; init; } = [];

    /// <summary>Runs for every endpoint after the test's instrumentation (protocols, TLS, ...).</summary>
    public Action<ListenOptions>? ConfigureListen { get; init; }

    /// <summary>When set, every endpoint runs this raw connection handler instead of HTTP.</summary>
    public Func<ConnectionContext, Task>? ConnectionHandler { get; init; }

    /// <summary>Maps the HTTP application (endpoints, middleware).</summary>
    public Action<WebApplication>? ConfigureApp { get; init; }

    /// <summary>Runs on the builder before the transport is registered (configuration, services).</summary>
    public Action<WebApplicationBuilder>? ConfigureBuilder { get; init; }

    /// <summary>Epoll options; ignored for Sockets.</summary>
    public Action<EpollTransportOptions>? Epoll { get; init; }

    /// <summary>Applied to whichever transport runs, when set (both transports have the option).</summary>
    public long? MaxReadBufferSize { get; init; }

    /// <summary>Applied to whichever transport runs, when set (both transports have the option).</summary>
    public long? MaxWriteBufferSize { get; init; }

    /// <summary>When false the transport is registered by the test's <see cref="ConfigureBuilder"/> itself.</summary>
    public bool RegisterTransport { get; init; } = true;

    /// <summary>Receives warnings and errors the server logs (which <see cref="TestServer.Logs"/> keeps either way).</summary>
    public ITestOutputHelper? Output { get; init; }
}

/// <summary>
/// A real Kestrel on loopback over the chosen transport. Every connection it accepts is checked to have been served
/// by that transport (an epoll host whose connections lack <see cref="IEpollConnectionFeature"/> fails on dispose), and
/// an error or a crash logged by the transport, Kestrel or the application fails on dispose unless the test declared it
/// with <see cref="LogSink.Expect(Func{LogEntry, bool}, string)"/> on <see cref="Logs"/>.
/// </summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly List<ListenOptions> _listeners = [];
    private readonly ConcurrentQueue<string> _wrongTransport = new();
    private int _connections;
    private bool _stopped;

    private TestServer(string transport, LogSink logs)
    {
        Transport = transport;
        Logs = logs;
    }

    public string Transport { get; }

    public WebApplication App { get; private set; } = null!;

    public LogSink Logs { get; }

    /// <summary>The endpoints as bound (port 0 replaced by the real port).</summary>
    public IReadOnlyList<EndPoint> EndPoints => _listeners.Select(l => l.EndPoint).ToList();

    /// <summary>The first endpoint as bound.</summary>
    public EndPoint EndPoint => _listeners[0].EndPoint;

    /// <summary>The first endpoint, which must be an IP endpoint.</summary>
    public IPEndPoint IPEndPoint => (IPEndPoint)EndPoint;

    public int Port => IPEndPoint.Port;

    /// <summary>http://127.0.0.1:port/ (or the IPv6 form) for the first endpoint.</summary>
    public Uri BaseAddress => Address("http");

    /// <summary>Kestrel's own view of its addresses (<see cref="IServerAddressesFeature"/>).</summary>
    public ICollection<string> ServerAddresses =>
        App.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;

    /// <summary>Connections that passed the transport check.</summary>
    public int ConnectionCount => Volatile.Read(ref _connections);

    public Uri Address(string scheme)
    {
        var ep = IPEndPoint;
        string host = ep.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ep.Address}]" : ep.Address.ToString();
        return new Uri($"{scheme}://{host}:{ep.Port}/");
    }

    /// <summary>An HTTP server on 127.0.0.1 port 0 running <paramref name="configureApp"/>.</summary>
    public static Task<TestServer> StartHttpAsync(string transport, Action<WebApplication> configureApp, Action<ListenOptions>? configureListen = null, ITestOutputHelper? output = null)
        => StartAsync(new TestServerOptions { Transport = transport, ConfigureApp = configureApp, ConfigureListen = configureListen, Output = output });

    /// <summary>A raw server on 127.0.0.1 port 0 running <paramref name="handler"/> for each connection.</summary>
    public static Task<TestServer> StartRawAsync(string transport, Func<ConnectionContext, Task> handler, Action<EpollTransportOptions>? epoll = null, ITestOutputHelper? output = null)
        => StartAsync(new TestServerOptions { Transport = transport, ConnectionHandler = handler, Epoll = epoll, Output = output });

    public static async Task<TestServer> StartAsync(TestServerOptions options)
    {
        var server = Build(options);
        try
        {
            using var cts = Timeouts.Cts();
            await server.App.StartAsync(cts.Token);
        }
        catch
        {
            server._stopped = true;
            await server.App.DisposeAsync();
            throw;
        }

        return server;
    }

    /// <summary>Builds the host without starting it (for tests of start-up failures).</summary>
    public static TestServer Build(TestServerOptions options)
    {
        bool epoll = Transports.IsEpoll(options.Transport);
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            EnvironmentName = "Testing",
            ContentRootPath = AppContext.BaseDirectory,
        });

        var logs = new LogSink(options.Output);
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(logs);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(15));

        options.ConfigureBuilder?.Invoke(builder);

        if (options.RegisterTransport)
        {
            if (epoll)
            {
                builder.WebHost.UseEpollTransport(o =>
                {
                    if (options.MaxReadBufferSize is { } r)
                    {
                        o.MaxReadBufferSize = r;
                    }

                    if (options.MaxWriteBufferSize is { } w)
                    {
                        o.MaxWriteBufferSize = w;
                    }

                    options.Epoll?.Invoke(o);
                });
            }
            else
            {
                builder.WebHost.UseSockets(o =>
                {
                    if (options.MaxReadBufferSize is { } r)
                    {
                        o.MaxReadBufferSize = r;
                    }

                    if (options.MaxWriteBufferSize is { } w)
                    {
                        o.MaxWriteBufferSize = w;
                    }
                });
            }
        }

        var server = new TestServer(options.Transport, logs);
        var endPoints = options.EndPoints.Count > 0 ? options.EndPoints : [new IPEndPoint(IPAddress.Loopback, 0)];
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            foreach (var endPoint in endPoints)
            {
                kestrel.Listen(endPoint, listen =>
                {
                    server._listeners.Add(listen);
                    listen.Use(next => connection =>
                    {
                        server.CheckTransport(connection, epoll);
                        return next(connection);
                    });
                    options.ConfigureListen?.Invoke(listen);
                    if (options.ConnectionHandler is { } handler)
                    {
                        listen.Run(handler);
                    }
                });
            }
        });

        var app = builder.Build();
        server.App = app;
        options.ConfigureApp?.Invoke(app);
        return server;
    }

    private void CheckTransport(ConnectionContext connection, bool epoll)
    {
        bool hasFeature = connection.Features.Get<IEpollConnectionFeature>() is not null;
        if (hasFeature != epoll)
        {
            _wrongTransport.Enqueue($"Connection {connection.ConnectionId} {(hasFeature ? "has" : "lacks")} IEpollConnectionFeature on a {Transport} host.");
        }

        Interlocked.Increment(ref _connections);
    }

    /// <summary>Stops the host gracefully, bounded by <see cref="Timeouts.Bulk"/>.</summary>
    public async Task StopAsync()
    {
        _stopped = true;
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        await App.StopAsync(cts.Token).WithTimeout(Timeouts.Bulk + TimeSpan.FromSeconds(5));
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_stopped)
            {
                await StopAsync();
            }
        }
        finally
        {
            await App.DisposeAsync();
        }

        if (!_wrongTransport.IsEmpty)
        {
            throw new InvalidOperationException("The wrong transport served connections: " + string.Join(" ", _wrongTransport.Take(3)));
        }

        // After the host is gone, so errors of the shutdown count too.
        Logs.AssertNoUnexpectedFailures();
    }
}

using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Outbound;

/// <summary>The factory from dependency injection: on the loops of a running epoll host, or on its own without Kestrel.</summary>
public sealed class OutboundHostingTests(ITestOutputHelper output)
{
    [Fact]
    public async Task In_an_epoll_host_IConnectionFactory_connects_on_the_transports_own_loops()
    {
        var server = await TestServer.StartRawAsync(Transports.Epoll, Handlers.EchoAsync, o => o.ThreadCount = 2, output);
        EpollThreadGroup group;
        await using (server)
        {
            var factory = Assert.IsType<EpollConnectionFactory>(server.App.Services.GetRequiredService<IConnectionFactory>());
            var transport = server.App.Services.GetRequiredService<EpollTransportFactory>();

            await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
            byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, "same loops"u8.ToArray());

            Assert.Equal("same loops", Encoding.ASCII.GetString(echoed));
            group = transport.Group!;
            Assert.Same(group, factory.Group);
            var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
            Assert.Equal(EpollConnectionDirection.Outbound, epoll.Direction);
            Assert.InRange(epoll.LoopIndex, 0, 1);
        }

        // The factory's hold on the loops ends with the host.
        Assert.All(group.Loops, loop => Assert.True(loop.Stopped.IsCompleted, $"epoll-{loop.Index} still runs after the host was disposed."));
    }

    [Fact]
    public async Task AddEpollConnectionFactory_called_before_the_transport_still_shares_its_loops()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConnectionHandler = Handlers.EchoAsync,
            ConfigureBuilder = b => b.Services.AddEpollConnectionFactory(),
            Output = output,
        });
        var factory = server.App.Services.GetRequiredService<EpollConnectionFactory>();

        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        await OutboundClient.SendThenReadToEndAsync(connection, "x"u8.ToArray());

        Assert.Same(server.App.Services.GetRequiredService<EpollTransportFactory>().Group, factory.Group);
        Assert.Single(server.App.Services.GetServices<IConnectionFactory>());
    }

    [Fact]
    public async Task Metrics_count_outbound_connections_apart_from_accepted_ones()
    {
        var serverDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async c =>
        {
            await Handlers.EchoAsync(c);
            serverDone.TrySetResult();
        }, output: output);
        var factory = server.App.Services.GetRequiredService<IConnectionFactory>();
        using var closedPort = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closedPort.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        ConnectionContext? connection = null;
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            connection = await factory.ConnectAsync(server.EndPoint).AsTask().WithTimeout();
            await OutboundClient.SendThenReadToEndAsync(connection, "count me"u8.ToArray());
            await connection.DisposeAsync().AsTask().WithTimeout();
            await serverDone.Task.WithTimeout();
            await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(closedPort.LocalEndPoint!).AsTask().WithTimeout());
        });

        foreach (var kv in metrics.Where(kv => kv.Key.StartsWith("epoll.conn", StringComparison.Ordinal)).OrderBy(kv => kv.Key))
        {
            output.WriteLine($"{kv.Key} = {kv.Value}");
        }

        Assert.Equal(1, metrics.GetValueOrDefault("epoll.connections.connected"));
        Assert.Equal(1, metrics.GetValueOrDefault("epoll.connections.accepted"));
        Assert.Equal(1, metrics.GetValueOrDefault("epoll.connections.closed[direction=outbound]"));
        Assert.Equal(1, metrics.GetValueOrDefault("epoll.connect.failures[error=ConnectionRefused]"));
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.connections.active[direction=outbound]"));
    }

    [Fact]
    public async Task AddEpollConnectionFactory_without_Kestrel_owns_its_loops_and_stops_them_with_the_container()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        var services = new ServiceCollection()
            .AddLogging()
            .AddEpollConnectionFactory(o => o.ThreadCount = 1)
            .AddEpollConnectionFactory();
        EpollThreadGroup group;

        // A console app's provider, disposed synchronously: the factory must allow that.
        using (var provider = services.BuildServiceProvider(validateScopes: true))
        {
            var factory = provider.GetRequiredService<IConnectionFactory>();
            Assert.Same(factory, provider.GetRequiredService<EpollConnectionFactory>());
            Assert.Single(provider.GetServices<IConnectionFactory>());

            await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
            byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, "no Kestrel"u8.ToArray());
            Assert.Equal("no Kestrel", Encoding.ASCII.GetString(echoed));
            group = ((EpollConnectionFactory)factory).Group!;
            Assert.Single(group.Loops);
        }

        Assert.All(group.Loops, loop => Assert.True(loop.Stopped.IsCompleted, $"epoll-{loop.Index} still runs after the container was disposed."));
    }

    [Fact]
    public void AddEpollConnectionFactory_rejects_a_bogus_option_when_the_factory_is_resolved()
    {
        using var provider = new ServiceCollection()
            .AddLogging()
            .AddEpollConnectionFactory(o => o.ConnectTimeout = TimeSpan.FromMilliseconds(1))
            .BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IConnectionFactory>());
        Assert.Contains("ConnectTimeout", ex.Message, StringComparison.Ordinal);
    }
}

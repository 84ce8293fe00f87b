using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Outbound;

/// <summary>How <see cref="EpollConnectionFactory.ConnectAsync"/> connects and fails, against real listeners on loopback.</summary>
public sealed class OutboundConnectTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Connects_to_an_IPv4_echo_server_and_exchanges_bytes()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory();

        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        byte[] data = Client.RandomBytes(256 * 1024, seed: 1);
        byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, data);

        Assert.Equal(Client.Sha256(data), Client.Sha256(echoed));
        var epoll = connection.Features.Get<IEpollConnectionFeature>();
        Assert.NotNull(epoll);
        Assert.Equal(EpollConnectionDirection.Outbound, epoll.Direction);
        Assert.NotEqual(0UL, epoll.Id);
        Assert.Equal(epoll.Id.ToString("X16", System.Globalization.CultureInfo.InvariantCulture), connection.ConnectionId);
        Assert.Equal(server.EndPoint, connection.RemoteEndPoint);
        var local = Assert.IsType<IPEndPoint>(connection.LocalEndPoint);
        Assert.Equal(IPAddress.Loopback, local.Address);
        Assert.NotEqual(0, local.Port);
    }

    [Fact]
    public async Task A_refused_connect_is_a_SocketException_ConnectionRefused()
    {
        // A bound socket that does not listen: its port is ours (nobody else can take it) and the kernel answers a
        // SYN to it with a RST.
        using var closedPort = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closedPort.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        await using var factory = OutboundClient.NewFactory();

        var ex = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(closedPort.LocalEndPoint!).AsTask().WithTimeout());

        output.WriteLine(ex.Message);
        Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
        Assert.Contains(closedPort.LocalEndPoint!.ToString()!, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unreachable_address_is_a_SocketException_NetworkUnreachable()
    {
        // TCP cannot connect to a broadcast address: the kernel refuses the route at once with ENETUNREACH
        // (tcp_v4_connect), on any machine, with or without a network.
        await using var factory = OutboundClient.NewFactory();

        var ex = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(new IPEndPoint(IPAddress.Broadcast, 80)).AsTask().WithTimeout());

        output.WriteLine(ex.Message);
        Assert.Equal(SocketError.NetworkUnreachable, ex.SocketErrorCode);
    }

    [Fact]
    public async Task A_connect_that_gets_no_answer_times_out_after_ConnectTimeout()
    {
        using var listener = await FullBacklogListener.StartAsync();
        await using var factory = OutboundClient.NewFactory(o => o.ConnectTimeout = TimeSpan.FromMilliseconds(300));

        var watch = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<TimeoutException>(async () => await await OutboundClient.FinishedAsync(factory.ConnectAsync(listener.EndPoint).AsTask()));
        watch.Stop();

        output.WriteLine($"{watch.ElapsedMilliseconds} ms: {ex.Message}");
        Assert.Contains("ConnectTimeout", ex.Message, StringComparison.Ordinal);
        Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(290), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Canceling_mid_connect_throws_OperationCanceledException_with_the_token()
    {
        using var listener = await FullBacklogListener.StartAsync();
        await using var factory = OutboundClient.NewFactory();
        using var cts = new CancellationTokenSource();

        Task<ConnectionContext> connect = factory.ConnectAsync(listener.EndPoint, cts.Token).AsTask();
        Assert.False(connect.IsCompleted, "The connect to a listener that drops SYNs completed.");
        cts.Cancel();
        var ex = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connect.WithTimeout());

        Assert.Equal(cts.Token, ex.CancellationToken);
    }

    [Fact]
    public async Task An_already_canceled_token_connects_nothing()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => factory.ConnectAsync(server.EndPoint, new CancellationToken(canceled: true)).AsTask().WithTimeout());

        // The server never saw a connection.
        Assert.Equal(0, server.ConnectionCount);
    }

    [Fact]
    public async Task Connects_over_IPv6_loopback()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Sockets,
            EndPoints = [new IPEndPoint(IPAddress.IPv6Loopback, 0)],
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        });
        await using var factory = OutboundClient.NewFactory();

        await using ConnectionContext connection = await factory.ConnectAsync(server.EndPoint).WithTimeout();
        byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, "over IPv6"u8.ToArray());

        Assert.Equal("over IPv6", Encoding.ASCII.GetString(echoed));
        Assert.Equal(IPAddress.IPv6Loopback, Assert.IsType<IPEndPoint>(connection.LocalEndPoint).Address);
    }

    [Fact]
    public async Task Connects_to_a_Unix_domain_socket()
    {
        string path = Path.Combine(Path.GetTempPath(), $"epoll-out-{Guid.NewGuid():N}.sock");
        try
        {
            await using var server = await TestServer.StartAsync(new TestServerOptions
            {
                Transport = Transports.Sockets,
                EndPoints = [new UnixDomainSocketEndPoint(path)],
                ConnectionHandler = Handlers.EchoAsync,
                Output = output,
            });
            await using var factory = OutboundClient.NewFactory();

            await using ConnectionContext connection = await factory.ConnectAsync(new UnixDomainSocketEndPoint(path)).WithTimeout();
            byte[] data = Client.RandomBytes(512 * 1024, seed: 3);
            byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, data);

            Assert.Equal(Client.Sha256(data), Client.Sha256(echoed));
            Assert.Equal(path, connection.RemoteEndPoint?.ToString());
            Assert.Equal(EpollConnectionDirection.Outbound, connection.Features.Get<IEpollConnectionFeature>()!.Direction);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_Unix_socket_path_nobody_listens_on_is_a_SocketException()
    {
        string path = Path.Combine(Path.GetTempPath(), $"epoll-out-missing-{Guid.NewGuid():N}.sock");
        await using var factory = OutboundClient.NewFactory();

        var ex = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(new UnixDomainSocketEndPoint(path)).AsTask().WithTimeout());

        output.WriteLine(ex.Message);
        Assert.Equal(SocketError.AddressNotAvailable, ex.SocketErrorCode);
    }

    [Fact]
    public async Task A_Unix_listener_with_a_full_backlog_refuses_at_once()
    {
        // A Unix stream socket does not wait for room in the backlog: a non-blocking connect fails with EAGAIN (unix(7)).
        // listen(0) queues one connection that nobody accepts; the next is refused.
        string path = Path.Combine(Path.GetTempPath(), $"epoll-out-full-{Guid.NewGuid():N}.sock");
        try
        {
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(path));
            listener.Listen(0);
            await using var factory = OutboundClient.NewFactory();
            await using ConnectionContext first = await factory.ConnectAsync(new UnixDomainSocketEndPoint(path)).WithTimeout();

            var ex = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(new UnixDomainSocketEndPoint(path)).AsTask().WithTimeout());

            output.WriteLine(ex.Message);
            Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
            Assert.Contains("backlog is full", ex.Message, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_host_name_is_resolved_and_connected()
    {
        await using var server = await TestServer.StartRawAsync(Transports.Sockets, Handlers.EchoAsync, output: output);
        await using var factory = OutboundClient.NewFactory();

        // "localhost" may resolve to ::1 first, where nothing listens: the next address is tried.
        await using ConnectionContext connection = await factory.ConnectAsync(new DnsEndPoint("localhost", server.Port)).WithTimeout();
        byte[] echoed = await OutboundClient.SendThenReadToEndAsync(connection, "by name"u8.ToArray());

        Assert.Equal("by name", Encoding.ASCII.GetString(echoed));
    }

    [Fact]
    public async Task Other_endpoint_types_and_a_disposed_factory_are_refused()
    {
        var factory = OutboundClient.NewFactory();
        await Assert.ThrowsAsync<NotSupportedException>(async () => await factory.ConnectAsync(new FileHandleEndPoint(3, FileHandleType.Tcp)));
        await factory.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, 1)));
    }

    [Fact]
    public void A_bogus_ConnectTimeout_is_rejected_naming_the_option_and_its_range()
    {
        var ex = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(
            () => new EpollConnectionFactory(new EpollTransportOptions { ConnectTimeout = TimeSpan.FromHours(2) }));

        Assert.Contains("ConnectTimeout", ex.Message, StringComparison.Ordinal);
        Assert.Contains("00:00:00.0100000", ex.Message, StringComparison.Ordinal);
        Assert.Contains("01:00:00", ex.Message, StringComparison.Ordinal);
    }
}

using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class EndpointTests(ITestOutputHelper output)
{
    [Theory, BothTransports]
    public async Task Port_0_binds_a_real_port_and_reports_it(string transport)
    {
        await using var server = await TestServer.StartHttpAsync(transport, TestApp.Map, output: output);

        Assert.NotEqual(0, server.Port);
        Assert.Equal(IPAddress.Loopback, server.IPEndPoint.Address);
        Assert.Contains($"http://127.0.0.1:{server.Port}", server.ServerAddresses);
        using var client = HttpClients.Create(server.BaseAddress);
        Assert.Equal(TestApp.Plaintext, await client.GetStringAsync("/plaintext"));
    }

    [Theory, BothTransports]
    public async Task IPv6_loopback_serves_requests(string transport)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            EndPoints = [new IPEndPoint(IPAddress.IPv6Loopback, 0)],
            ConfigureApp = TestApp.Map,
            Output = output,
        });
        Assert.Equal(AddressFamily.InterNetworkV6, server.IPEndPoint.AddressFamily);
        Assert.NotEqual(0, server.Port);

        using var client = HttpClients.Create(server.BaseAddress);
        string conn = await client.GetStringAsync("/conn");
        Assert.EndsWith("remote=::1", conn);
    }

    [Theory, BothTransports]
    public async Task IPv6Any_is_dual_mode_and_reachable_over_IPv4_and_IPv6(string transport)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            EndPoints = [new IPEndPoint(IPAddress.IPv6Any, 0)],
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        });
        int port = server.Port;
        Assert.NotEqual(0, port);

        foreach (var address in new[] { IPAddress.Loopback, IPAddress.IPv6Loopback })
        {
            using var socket = await Client.ConnectAsync(new IPEndPoint(address, port));
            await socket.SendAllAsync($"via {address}");
            Assert.Equal($"via {address}", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync($"via {address}".Length)));
        }
    }

    [Theory, BothTransports]
    public async Task A_Unix_domain_socket_serves_requests_and_its_file_is_removed_when_the_host_stops(string transport)
    {
        string path = Path.Combine(Path.GetTempPath(), $"epoll-test-{Guid.NewGuid():N}.sock");
        try
        {
            var server = await TestServer.StartAsync(new TestServerOptions
            {
                Transport = transport,
                EndPoints = [new UnixDomainSocketEndPoint(path)],
                ConfigureApp = TestApp.Map,
                Output = output,
            });
            await using (server)
            {
                Assert.True(File.Exists(path), "The socket file was not created.");
                using var socket = await Client.ConnectAsync(new UnixDomainSocketEndPoint(path));
                var reader = new RawHttpReader(socket);
                for (int i = 0; i < 3; i++)
                {
                    await socket.SendAllAsync(RawHttpReader.Get($"/item/{i}"));
                    var response = await reader.ReadResponseAsync();
                    Assert.Equal(200, response.StatusCode);
                    Assert.Equal($"item {i}", response.BodyText);
                }

                await server.StopAsync();
            }

            Assert.False(File.Exists(path), "The socket file is still there after the host stopped.");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory, BothTransports]
    public async Task A_port_that_is_taken_fails_start_with_AddressInUseException(string transport)
    {
        using var blocker = ListenOnLoopback();
        var taken = (IPEndPoint)blocker.LocalEndPoint!;

        await AssertAddressInUseAsync(new TestServerOptions { Transport = transport, EndPoints = [taken], ConfigureApp = TestApp.Map });
    }

    [Theory, BothTransports]
    public async Task A_taken_port_after_one_that_bound_still_fails_start_with_AddressInUseException(string transport)
    {
        // Kestrel binds the first endpoint, fails on the second, and unbinds the first with a cancelled token: the
        // error the user sees must still be the taken port, not the cancelled unbind.
        using var blocker = ListenOnLoopback();
        var taken = (IPEndPoint)blocker.LocalEndPoint!;

        await AssertAddressInUseAsync(new TestServerOptions
        {
            Transport = transport,
            EndPoints = [new IPEndPoint(IPAddress.Loopback, 0), taken],
            ConfigureApp = TestApp.Map,
        });
    }

    [Theory]
    [InlineData(EpollAcceptDistribution.ReusePort)]
    [InlineData(EpollAcceptDistribution.Exclusive)]
    public async Task A_port_taken_by_a_socket_without_SO_REUSEPORT_fails_start_whatever_the_accept_distribution(EpollAcceptDistribution distribution)
    {
        using var blocker = ListenOnLoopback();
        var taken = (IPEndPoint)blocker.LocalEndPoint!;

        await AssertAddressInUseAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [taken],
            ConfigureApp = TestApp.Map,
            Epoll = o =>
            {
                o.AcceptDistribution = distribution;
                o.ThreadCount = 2;
            },
        });
    }

    [Theory, BothTransports]
    public async Task A_listening_fd_handed_over_as_a_FileHandleEndPoint_serves_requests(string transport)
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(128);
        var address = (IPEndPoint)listener.LocalEndPoint!;
        long fd = listener.Handle;
        if (!Transports.IsEpoll(transport))
        {
            // The Sockets transport takes ownership of the fd and closes it: our Socket must never close the number
            // again. (Disposing a Socket whose handle was set invalid hangs, so it is not disposed either.)
            listener.SafeHandle.SetHandleAsInvalid();
        }

        try
        {
            var server = await TestServer.StartAsync(new TestServerOptions
            {
                Transport = transport,
                EndPoints = [new FileHandleEndPoint((ulong)fd, FileHandleType.Tcp)],
                ConnectionHandler = Handlers.EchoAsync,
                Output = output,
            });
            await using (server)
            {
                Assert.Equal(address, server.EndPoint);
                using var socket = await Client.ConnectAsync(address);
                await socket.SendAllAsync("handed over");
                Assert.Equal("handed over", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(11)));
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync());
            }
        }
        finally
        {
            if (Transports.IsEpoll(transport))
            {
                listener.Dispose();
            }
        }
    }

    [Fact]
    public async Task The_epoll_transport_leaves_a_handed_over_fd_open_and_listening_after_the_host_stops()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(128);
        var address = (IPEndPoint)listener.LocalEndPoint!;
        long fd = listener.Handle;
        string? before = ProcessInfo.DescribeFd(fd);

        await using (var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [new FileHandleEndPoint((ulong)fd, FileHandleType.Tcp)],
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        }))
        {
            Assert.Equal(address, server.EndPoint);
            using var socket = await Client.ConnectAsync(address);
            await socket.SendAllAsync("x");
            Assert.Equal("x", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(1)));
        }

        // Same socket behind the same fd, still listening: a new client is queued and our Socket accepts it.
        Assert.NotNull(before);
        Assert.Equal(before, ProcessInfo.DescribeFd(fd));
        using var late = await Client.ConnectAsync(address);
        using var cts = Timeouts.Cts();
        using var accepted = await listener.AcceptAsync(cts.Token);
        await late.SendAllAsync("ok");
        Assert.Equal("ok", Encoding.ASCII.GetString(await accepted.ReceiveExactlyAsync(2)));
    }

    [Theory]
    [InlineData(EpollAcceptDistribution.ReusePort)]
    [InlineData(EpollAcceptDistribution.Exclusive)]
    public async Task Both_accept_distributions_serve_connections_on_every_loop_index(EpollAcceptDistribution distribution)
    {
        var loops = new System.Collections.Concurrent.ConcurrentBag<int>();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, connection =>
        {
            loops.Add(connection.Features.Get<IEpollConnectionFeature>()!.LoopIndex);
            return Handlers.EchoAsync(connection);
        }, o =>
        {
            o.ThreadCount = 2;
            o.AcceptDistribution = distribution;
        }, output);

        var clients = await Task.WhenAll(Enumerable.Range(0, 64).Select(_ => Client.ConnectAsync(server.EndPoint)));
        try
        {
            await Task.WhenAll(clients.Select(async (socket, i) =>
            {
                await socket.SendAllAsync($"client {i:D3}");
                Assert.Equal($"client {i:D3}", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(10)));
            }));
        }
        finally
        {
            foreach (var socket in clients)
            {
                socket.Dispose();
            }
        }

        Assert.Equal(64, loops.Count);
        Assert.All(loops, index => Assert.InRange(index, 0, 1));
        output.WriteLine($"{distribution}: loop 0 took {loops.Count(l => l == 0)}, loop 1 took {loops.Count(l => l == 1)}.");
        if (distribution == EpollAcceptDistribution.ReusePort)
        {
            // The kernel hashes each connection to one of the two sockets: 64 connections all on one loop would mean
            // the second socket is not on the same port (chance 2^-63 otherwise).
            Assert.Equal(2, loops.Distinct().Count());
        }
    }

    /// <summary>
    /// MaxPendingAccepts = 1: the loops pause accepting whenever one accepted connection waits for Kestrel, and must
    /// resume every time Kestrel takes it, or the listener stalls with the kernel's backlog full.
    /// </summary>
    [Theory]
    [InlineData(EpollAcceptDistribution.ReusePort)]
    [InlineData(EpollAcceptDistribution.Exclusive)]
    public async Task Accepting_resumes_every_time_with_MaxPendingAccepts_of_one(EpollAcceptDistribution distribution)
    {
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, Handlers.EchoAsync, o =>
        {
            o.ThreadCount = 2;
            o.AcceptDistribution = distribution;
            o.MaxPendingAccepts = 1;
        }, output);

        for (int round = 0; round < 10; round++)
        {
            var clients = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => Client.ConnectAsync(server.EndPoint))).WithTimeout();
            try
            {
                await Task.WhenAll(clients.Select(async (socket, i) =>
                {
                    await socket.SendAllAsync($"r{round:D2}c{i:D2}");
                    Assert.Equal($"r{round:D2}c{i:D2}", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(6)));
                })).WithTimeout();
            }
            finally
            {
                foreach (var socket in clients)
                {
                    socket.Dispose();
                }
            }
        }

        Assert.Equal(500, server.ConnectionCount);
    }

    /// <summary>A plain listening socket on a free loopback port (no SO_REUSEPORT): the port a server must fail to take.</summary>
    private static Socket ListenOnLoopback()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        socket.Listen();
        return socket;
    }

    private static async Task AssertAddressInUseAsync(TestServerOptions options)
    {
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestServer.StartAsync(options));
        var chain = new List<Exception>();
        for (var e = ex; e is not null; e = e.InnerException)
        {
            chain.Add(e);
        }

        Assert.True(
            chain.Any(e => e is AddressInUseException),
            "No AddressInUseException in: " + string.Join(" <- ", chain.Select(e => $"{e.GetType().Name}: {e.Message}")));
        Assert.True(ex is IOException or AddressInUseException, $"Start failed with {ex.GetType().Name}, not an IOException.");
    }
}

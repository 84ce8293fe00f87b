using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// AllowPortSharing (issue 14, zero-downtime restart): two servers on one port only when both opt in, and a server
/// that stops on a shared port loses none of the connections the kernel already queued for it. The kernel treats two
/// hosts in one test process exactly as two processes: a SO_REUSEPORT group is per user (socket(7)), not per process.
/// </summary>
public sealed class PortSharingTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(EpollAcceptDistribution.Exclusive, false, false)]
    [InlineData(EpollAcceptDistribution.Exclusive, true, false)]
    [InlineData(EpollAcceptDistribution.Exclusive, false, true)]
    [InlineData(EpollAcceptDistribution.ReusePort, false, false)]
    [InlineData(EpollAcceptDistribution.ReusePort, true, false)]
    public async Task A_second_server_on_a_taken_port_fails_start_unless_both_allow_port_sharing(EpollAcceptDistribution distribution, bool firstShares, bool secondShares)
    {
        await using var first = await StartEchoAsync(new IPEndPoint(IPAddress.Loopback, 0), distribution, firstShares);
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => StartEchoAsync(first.IPEndPoint, distribution, secondShares));
        Assert.Contains(Chain(ex), e => e is AddressInUseException);

        // The first server still has the port to itself.
        await AssertEchoesAsync(first.IPEndPoint, 8);
    }

    [Theory]
    [InlineData(EpollAcceptDistribution.Exclusive)]
    [InlineData(EpollAcceptDistribution.ReusePort)]
    public async Task Two_servers_that_allow_port_sharing_both_serve_one_port(EpollAcceptDistribution distribution)
    {
        await using var first = await StartEchoAsync(new IPEndPoint(IPAddress.Loopback, 0), distribution, share: true);
        int firstSockets = ProcessInfo.ListeningSocketInodes(first.IPEndPoint.Port).Count;
        await using var second = await StartEchoAsync(first.IPEndPoint, distribution, share: true);
        Assert.Equal(first.IPEndPoint, second.IPEndPoint);
        int secondSockets = ProcessInfo.ListeningSocketInodes(first.IPEndPoint.Port).Count - firstSockets;

        await AssertEchoesAsync(first.IPEndPoint, 64);
        output.WriteLine($"first took {first.ConnectionCount}, second took {second.ConnectionCount}");

        // The kernel hashes each connection to one socket of the group: all 64 on one server would mean the other is
        // not in the group (chance 2^-63 otherwise).
        Assert.Equal(64, first.ConnectionCount + second.ConnectionCount);
        Assert.True(first.ConnectionCount > 0 && second.ConnectionCount > 0, "One of the servers took no connection.");

        // The old one stops; the new one keeps the port. Once StopAsync returns, the old listener has left the port's
        // SO_REUSEPORT group (a connection the kernel still queued on it would be reset at its close).
        await first.StopAsync();
        List<string> listening = ProcessInfo.ListeningSocketInodes(first.IPEndPoint.Port);
        Assert.True(listening.Count == secondSockets, $"{listening.Count} sockets listen on the port after the first server stopped; the second has {secondSockets}.");
        try
        {
            await AssertEchoesAsync(first.IPEndPoint, 16);
        }
        catch (SocketException e)
        {
            throw new Xunit.Sdk.XunitException($"After the first server stopped: {e.Message}; sockets listening on the port now: {ProcessInfo.ListeningSocketInodes(first.IPEndPoint.Port).Count}.");
        }

        Assert.Equal(80, first.ConnectionCount + second.ConnectionCount);
    }

    /// <summary>
    /// The connections the kernel tied to the stopping listener but nobody accepted yet: listener A takes one and
    /// pauses (MaxPendingAccepts = 1, its application not accepting), so the rest of its share waits in its kernel
    /// queue; then A unbinds while B serves. With net.ipv4.tcp_migrate_req = 1 the kernel moves them to B; with 0
    /// A accepts them before it closes; before this change the close reset them. Either way: every client is
    /// served by A or B, none is reset.
    /// </summary>
    [Theory]
    [InlineData(EpollAcceptDistribution.Exclusive)]
    [InlineData(EpollAcceptDistribution.ReusePort)]
    public async Task Unbinding_a_shared_port_resets_none_of_the_connections_queued_for_it(EpollAcceptDistribution distribution)
    {
        output.WriteLine($"net.ipv4.tcp_migrate_req = {(TcpMigrateReq.IsEnabled() ? 1 : 0)}");
        await using var factoryA = Factory(distribution, maxPendingAccepts: 1);
        await using var factoryB = Factory(distribution, maxPendingAccepts: 1024);
        IConnectionListener a = await factoryA.BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        IConnectionListener b = await factoryB.BindAsync(a.EndPoint);
        var servedByB = new ConcurrentBag<Task>();
        var servedByA = new ConcurrentBag<Task>();
        Task acceptB = AcceptAllAsync(b, servedByB);
        const int Clients = 40;
        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < Clients; i++)
            {
                clients.Add(await Client.ConnectAsync(a.EndPoint));
            }

            // B took its share; A holds one in its queue and the rest of its share waits in the kernel.
            await Poll.UntilStableAsync(() => servedByB.Count, TimeSpan.FromMilliseconds(300));
            int queuedInKernel = Clients - servedByB.Count - 1;
            output.WriteLine($"B accepted {servedByB.Count}; A holds 1 and the kernel queued {queuedInKernel} more for A");
            Assert.True(queuedInKernel > 0, "No connection waited in A's kernel queue: the test proves nothing.");

            // As Kestrel stops: unbind while its accept loop still takes what the listener hands out, until null.
            Task acceptA = AcceptAllAsync(a, servedByA);
            await a.UnbindAsync().AsTask().WithTimeout();
            await acceptA.WithTimeout();

            await Task.WhenAll(clients.Select(async (socket, i) =>
            {
                await socket.SendAllAsync($"c{i:D2}");
                Assert.Equal($"c{i:D2}", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(3)));
            })).WithTimeout();
            Assert.Equal(Clients, servedByA.Count + servedByB.Count);
            output.WriteLine($"served: A {servedByA.Count}, B {servedByB.Count}");
        }
        finally
        {
            foreach (Socket socket in clients)
            {
                socket.Dispose();
            }

            await a.DisposeAsync();
            await b.UnbindAsync();
            await acceptB.WithTimeout();
            await Task.WhenAll(servedByA.Concat(servedByB)).WithTimeout();
            await b.DisposeAsync();
        }
    }

    private static EpollTransportFactory Factory(EpollAcceptDistribution distribution, int maxPendingAccepts)
        => new(Options.Create(new EpollTransportOptions
        {
            ThreadCount = 2,
            AcceptDistribution = distribution,
            AllowPortSharing = true,
            MaxPendingAccepts = maxPendingAccepts,
        }), NullLoggerFactory.Instance);

    /// <summary>Accepts until the listener says it is unbound (null), echoing 3 bytes on each connection.</summary>
    private static async Task AcceptAllAsync(IConnectionListener listener, ConcurrentBag<Task> served)
    {
        while (await listener.AcceptAsync() is { } connection)
        {
            served.Add(EchoThreeAsync(connection));
        }
    }

    private static async Task EchoThreeAsync(ConnectionContext connection)
    {
        try
        {
            while (true)
            {
                var result = await connection.Transport.Input.ReadAsync();
                if (result.Buffer.Length >= 3 || result.IsCompleted)
                {
                    await connection.Transport.Output.WriteAsync(System.Buffers.BuffersExtensions.ToArray(result.Buffer.Slice(0, Math.Min(3, result.Buffer.Length))));
                    connection.Transport.Input.AdvanceTo(result.Buffer.End);
                    break;
                }

                connection.Transport.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            }
        }
        finally
        {
            await connection.DisposeAsync();
        }
    }

    private Task<TestServer> StartEchoAsync(IPEndPoint endPoint, EpollAcceptDistribution distribution, bool share)
        => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [endPoint],
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
            Epoll = o =>
            {
                o.ThreadCount = 2;
                o.AcceptDistribution = distribution;
                o.AllowPortSharing = share;
            },
        });

    private static async Task AssertEchoesAsync(IPEndPoint endPoint, int count)
    {
        await Task.WhenAll(Enumerable.Range(0, count).Select(async i =>
        {
            using var socket = await Client.ConnectAsync(endPoint);
            await socket.SendAllAsync($"client {i:D3}");
            Assert.Equal($"client {i:D3}", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(10)));
        })).WithTimeout();
    }

    private static IEnumerable<Exception> Chain(Exception ex)
    {
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            yield return e;
        }
    }
}

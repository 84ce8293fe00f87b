using System.Buffers.Binary;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>Addressing by id at the edges of a connection's life: the host's graceful stop sends what is queued by id
/// (libsock's flush-all) before the FIN, and HTTP connections are never addressable.</summary>
[Collection(SerialCollection.Name)]
public sealed class ByIdLifetimeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_graceful_stop_sends_what_is_queued_by_id_before_the_connection_closes()
    {
        const int MessageSize = 8 * 1024;
        const int Messages = 256;
        await using var server = await AddressableServer.StartAsync(output, o => o.MaxWriteBufferSize = 4 * 1024 * 1024);
        IEpollConnections connections = server.Connections;

        // The client does not read yet: most of the 2 MiB stays queued by id on the server.
        using var client = await Client.ConnectAsync(server.Server.EndPoint, s => s.ReceiveBufferSize = 4096);
        AddressedConnection accepted = await server.NextAsync();
        for (int m = 0; m < Messages; m++)
        {
            var message = new byte[MessageSize];
            BinaryPrimitives.WriteInt32LittleEndian(message, m);
            Assert.Equal(EpollWriteResult.Written, connections.Write(accepted.Id, message));
        }

        Assert.True(connections.TryGetInfo(accepted.Id, out EpollConnectionInfo? info));
        output.WriteLine($"{info.QueuedBytes} bytes queued by id when the stop begins");
        Assert.True(info.QueuedBytes > MessageSize * 16, $"only {info.QueuedBytes} bytes were still queued");

        // The stop asks the handler to end (ConnectionClosedRequested); its connection closes once the queue is sent.
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        Task stopping = server.Server.App.StopAsync(cts.Token);
        byte[] all = await client.ReceiveToEndAsync(timeout: Timeouts.Bulk);
        await stopping.WithTimeout(Timeouts.Bulk);

        Assert.Equal(Messages * MessageSize, all.Length);
        for (int m = 0; m < Messages; m++)
        {
            Assert.Equal(m, BinaryPrimitives.ReadInt32LittleEndian(all.AsSpan(m * MessageSize)));
        }
    }

    [Fact]
    public async Task HTTP_connections_are_not_addressable_and_their_ids_answer_gone()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureApp = app => app.MapGet("/byid", (HttpContext context, IEpollConnections connections) =>
            {
                ulong id = context.Features.Get<IEpollConnectionFeature>()!.Id;
                EpollWriteResult write = connections.Write(id, "HTTP/1.1 200 OK\r\n\r\n"u8);
                return $"{write} {connections.TryGetInfo(id, out _)} {connections.GetIds().Contains(id)} {connections.Close(id)} {connections.Abort(id)}";
            }),
        });

        using var client = HttpClients.Create(server.BaseAddress);
        using var cts = Timeouts.Cts();
        Assert.Equal("Gone False False False False", await client.GetStringAsync("/byid", cts.Token));

        // The connection was not touched: it serves the next request.
        Assert.Equal("Gone False False False False", await client.GetStringAsync("/byid", cts.Token));
    }

    [Fact]
    public async Task A_connection_whose_Transport_is_replaced_is_refused_or_stops_being_addressable()
    {
        var results = new TaskCompletionSource<(Exception? AfterReplace, EpollWriteResult Write, bool Info, bool Close, bool Abort)>(TaskCreationOptions.RunContinuationsAsynchronously);
        IEpollConnections? connections = null;
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var original = connection.Transport;
            ulong id = connection.MakeAddressable();

            // What TLS middleware does: the application now talks to a wrapper, and bytes by id would bypass it.
            connection.Transport = new WrappedPipe(original);
            EpollWriteResult write = connections!.Write(id, "x"u8);
            bool info = connections.TryGetInfo(id, out _);
            Exception? again = Record.Exception(() => connection.MakeAddressable());
            results.TrySetResult((again, write, info, connections.Close(id), connections.Abort(id)));
            await Handlers.EchoAsync(connection);
        }, output: output);
        connections = server.App.Services.GetRequiredService<IEpollConnections>();

        using var client = await Client.ConnectAsync(server.EndPoint);
        var (afterReplace, write, info, close, abort) = await results.Task.WithTimeout();
        Assert.IsType<InvalidOperationException>(afterReplace);
        Assert.Equal(EpollWriteResult.Gone, write);
        Assert.False(info);
        Assert.False(close);
        Assert.False(abort);

        // The connection itself is untouched: it still echoes through its (wrapped) pipe.
        await client.SendAllAsync("still here");
        Assert.Equal("still here", Encoding.ASCII.GetString(await client.ReceiveExactlyAsync(10)));
        Assert.Contains(server.Logs.Entries, e => e.EventId.Id == 402);
    }

    [Fact]
    public async Task An_outbound_connection_from_the_hosts_factory_is_addressable_too()
    {
        await using var server = await AddressableServer.StartAsync(output);
        IEpollConnections connections = server.Connections;
        var factory = server.Server.App.Services.GetRequiredService<IConnectionFactory>();

        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen();
        using var cts = Timeouts.Cts();
        Task<System.Net.Sockets.Socket> accepting = listener.AcceptAsync(cts.Token).AsTask();
        ConnectionContext outbound = await factory.ConnectAsync(listener.LocalEndPoint!, cts.Token).AsTask().WithTimeout();
        await using var _ = outbound;
        using var peer = await accepting.WithTimeout();

        ulong id = outbound.MakeAddressable();
        Assert.True(connections.TryGetInfo(id, out EpollConnectionInfo? info));
        Assert.Equal(EpollConnectionDirection.Outbound, info.Direction);
        Assert.Null(info.ListenEndPoint);
        Assert.Equal(EpollWriteResult.Written, await Task.Run(() => connections.Write(id, "by id\n"u8)));
        Assert.Equal("by id\n", Encoding.ASCII.GetString(await peer.ReceiveExactlyAsync(6)));
    }

    private sealed class WrappedPipe(System.IO.Pipelines.IDuplexPipe inner) : System.IO.Pipelines.IDuplexPipe
    {
        public System.IO.Pipelines.PipeReader Input => inner.Input;

        public System.IO.Pipelines.PipeWriter Output => inner.Output;
    }
}

using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.ProxyProtocol;

/// <summary>
/// A raw epoll server whose endpoint requires the PROXY protocol. Its handler counts the connections that reach it,
/// writes one line describing what it sees (remote|local|version|command|TLV count), then echoes.
/// </summary>
internal sealed class ProxyProtocolServer : IAsyncDisposable
{
    private int _handled;

    private ProxyProtocolServer(TestServer server) => Server = server;

    public TestServer Server { get; }

    public EndPoint EndPoint => Server.EndPoint;

    /// <summary>Connections that reached the application.</summary>
    public int Handled => Volatile.Read(ref _handled);

    public static async Task<ProxyProtocolServer> StartAsync(ITestOutputHelper? output, Action<ProxyProtocolOptions>? configure = null, EndPoint? endPoint = null, Action<EpollTransportOptions>? epoll = null)
    {
        ProxyProtocolServer? self = null;
        var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = endPoint is null ? [] : [endPoint],
            ConfigureListen = listen => listen.UseProxyProtocol(o =>
            {
                o.TrustedProxies.Add("127.0.0.1");
                o.TrustedProxies.Add("::1");
                configure?.Invoke(o);
            }),
            ConnectionHandler = connection => self!.DescribeAndEchoAsync(connection),
            Epoll = epoll,
            Output = output,
        });
        self = new ProxyProtocolServer(server);
        return self;
    }

    /// <summary>Sends <paramref name="header"/> and <paramref name="after"/> in one write; returns the line the
    /// handler wrote and the echo of <paramref name="after"/>.</summary>
    public async Task<(string Line, byte[] Echo)> ExchangeAsync(byte[] header, byte[] after, Action<Socket>? configure = null, EndPoint? target = null)
    {
        using var socket = await Client.ConnectAsync(target ?? EndPoint, configure);
        await socket.SendAllAsync(ProxyHeaders.Concat(header, after));
        string line = await socket.ReceiveLineAsync();
        byte[] echo = after.Length == 0 ? [] : await socket.ReceiveExactlyAsync(after.Length);
        return (line, echo);
    }

    /// <summary>Waits until the server closes <paramref name="socket"/>; returns the bytes that arrived first (a
    /// reset counts as the close: the transport refuses with a RST).</summary>
    public static async Task<int> ReceiveUntilClosedAsync(Socket socket)
    {
        int total = 0;
        var buffer = new byte[4096];
        try
        {
            while (true)
            {
                int n = await socket.ReceiveOnceAsync(buffer);
                if (n == 0)
                {
                    return total;
                }

                total += n;
            }
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset)
        {
            return total;
        }
    }

    /// <summary>Connects from <paramref name="local"/>, sends <paramref name="data"/>, and returns once the server
    /// refused the connection (a RST, which may already fail the connect or the send) with no byte received.</summary>
    public Task ExpectRefusedAsync(IPAddress local, byte[] data) => ExpectRefusedAsync(EndPoint, local, data);

    /// <summary><see cref="ExpectRefusedAsync(IPAddress, byte[])"/> for any server; from the default address when
    /// <paramref name="local"/> is null.</summary>
    public static async Task ExpectRefusedAsync(EndPoint server, IPAddress? local, byte[] data)
    {
        Socket socket;
        try
        {
            socket = await Client.ConnectAsync(server, s =>
            {
                if (local is not null)
                {
                    s.Bind(new IPEndPoint(local, 0));
                }
            });
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return;
        }

        using (socket)
        {
            try
            {
                await socket.SendAllAsync(data);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted)
            {
                return;
            }

            Assert.Equal(0, await ReceiveUntilClosedAsync(socket));
        }
    }

    /// <summary>The reason logged for the connection the server refused (event 209: invalid; 210: timeout).</summary>
    public async Task<LogEntry> RejectionAsync(int count = 1)
    {
        Assert.True(await Poll.UntilAsync(() => Rejections.Count >= count), $"No PROXY header rejection logged; logs: {string.Join(" | ", Server.Logs.Entries)}");
        return Rejections[count - 1];
    }

    public List<LogEntry> Rejections => Server.Logs.Entries.Where(e => e.EventId.Id is 209 or 210).ToList();

    public ValueTask DisposeAsync() => Server.DisposeAsync();

    private async Task DescribeAndEchoAsync(ConnectionContext connection)
    {
        Interlocked.Increment(ref _handled);
        var feature = connection.Features.Get<IProxyProtocolFeature>();
        string line = $"{connection.RemoteEndPoint}|{connection.LocalEndPoint}|{feature?.Version}|{feature?.Command}|{feature?.Tlvs.Count}\n";
        await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes(line));
        await Handlers.EchoAsync(connection);
    }
}

using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.DependencyInjection;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>One connection the raw handler made addressable: its id, its fd, and when its handler ended.</summary>
public sealed record AddressedConnection(ConnectionContext Context, ulong Id, int Fd, Task HandlerDone);

/// <summary>
/// A raw epoll server whose handler makes every connection addressable, reports it, runs an optional body (its own
/// output), then waits for the peer's FIN or the host's graceful stop (ConnectionClosedRequested) and returns.
/// </summary>
public sealed class AddressableServer : IAsyncDisposable
{
    private readonly Channel<AddressedConnection> _accepted = Channel.CreateUnbounded<AddressedConnection>();

    private AddressableServer()
    {
    }

    public TestServer Server { get; private set; } = null!;

    public IEpollConnections Connections => Server.App.Services.GetRequiredService<IEpollConnections>();

    public static async Task<AddressableServer> StartAsync(ITestOutputHelper output, Action<EpollTransportOptions>? epoll = null, Func<ConnectionContext, ulong, Task>? body = null, byte[]? greeting = null)
    {
        var server = new AddressableServer();
        server.Server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            try
            {
                ulong id = greeting is null ? connection.MakeAddressable() : connection.MakeAddressable(greeting);
                int fd = await connection.Features.Get<IEpollConnectionFeature>()!.WithSocketAsync(static fd => fd);
                server._accepted.Writer.TryWrite(new AddressedConnection(connection, id, fd, done.Task));
                if (body is not null)
                {
                    await body(connection, id);
                }

                CancellationToken stopping = connection.Features.Get<IConnectionLifetimeNotificationFeature>()?.ConnectionClosedRequested ?? default;
                while (!stopping.IsCancellationRequested)
                {
                    System.IO.Pipelines.ReadResult result;
                    try
                    {
                        result = await connection.Transport.Input.ReadAsync(stopping);
                    }
                    catch (OperationCanceledException)
                    {
                        break;
                    }

                    connection.Transport.Input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        break;
                    }
                }
            }
            catch (ConnectionResetException)
            {
                // A client that resets is fine here.
            }
            finally
            {
                done.TrySetResult();
            }
        }, epoll, output);
        return server;
    }

    /// <summary>The next connection the handler made addressable.</summary>
    public Task<AddressedConnection> NextAsync() => _accepted.Reader.ReadAsync().AsTask().WithTimeout();

    /// <summary>Connects <paramref name="count"/> clients and returns them with their server-side connections, in the same order.</summary>
    public async Task<(Socket[] Clients, AddressedConnection[] Accepted)> ConnectAsync(int count, Action<Socket>? configure = null)
    {
        var clients = new Socket[count];
        var accepted = new AddressedConnection[count];
        for (int i = 0; i < count; i++)
        {
            clients[i] = await Client.ConnectAsync(Server.EndPoint, configure);
            accepted[i] = await NextAsync();
        }

        return (clients, accepted);
    }

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}

using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// The fd-collision risk (docs/ARCHITECTURE.md, "Connection ids"): the kernel hands a closed connection's fd to the next
/// accepted one, so work still in flight for the old connection must never reach the new one. Epoll only: the
/// ids and fds are this transport's. In the serial collection because the test steers which fd the kernel hands out.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class ConnectionIdTests(ITestOutputHelper output)
{
    private sealed record Accepted(ConnectionContext Context, IEpollConnectionFeature Feature, ulong Id, int Fd, Task Closed, TaskCompletionSource Release);

    [Fact]
    public async Task Late_work_for_a_closed_connection_never_reaches_the_connection_that_got_its_fd()
    {
        var accepted = Channel.CreateUnbounded<Accepted>();

        // One loop: A's late work and B's traffic are then handled in order on the same thread.
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var feature = connection.Features.Get<IEpollConnectionFeature>()!;
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());
            var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            accepted.Writer.TryWrite(new Accepted(connection, feature, feature.Id, await feature.WithSocketAsync(static fd => fd), closed.Task, release));
            try
            {
                await Handlers.EchoAsync(connection);
            }
            catch (ConnectionResetException)
            {
                // A is reset by its client.
            }

            // Keep the context alive (Kestrel disposes it when the handler returns) until the test says so.
            await release.Task;
            await connection.DisposeAsync();
        }, o => o.ThreadCount = 1, output);

        for (int attempt = 1; ; attempt++)
        {
            var dummies = new List<SafeFileHandle>();
            using var clientA = await Client.ConnectAsync(server.EndPoint);
            var a = await accepted.Reader.ReadAsync().WithTimeout();
            await RoundTripAsync(clientA, "A");

            // B's client socket gets its fd now, before A's fd is freed, so the next accept is the one that can get it.
            using var clientB = new Socket(server.IPEndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            clientA.Reset();
            await a.Closed.WithTimeout();
            await Assert.ThrowsAsync<ObjectDisposedException>(() => a.Feature.WithSocketAsync(static fd => fd).WithTimeout());
            Assert.Equal(EpollCloseReason.PeerReset, a.Feature.CloseReason);

            // Fill every free fd below A's, so A's is the lowest free one (the kernel hands out the lowest).
            if (!OccupyFdsBelow(a.Fd, dummies))
            {
                dummies.ForEach(d => d.Dispose());
                a.Release.SetResult();
                Assert.True(attempt < 5, "Another fd owner kept taking A's fd.");
                continue;
            }

            await clientB.ConnectAsync(server.EndPoint).WithTimeout();
            var b = await accepted.Reader.ReadAsync().WithTimeout();
            dummies.ForEach(d => d.Dispose());
            output.WriteLine($"attempt {attempt}: A id {a.Id:x} fd {a.Fd}; B id {b.Id:x} fd {b.Fd}");
            if (b.Fd != a.Fd)
            {
                a.Release.SetResult();
                b.Release.SetResult();
                Assert.True(attempt < 5, $"B never got A's fd {a.Fd} (last got {b.Fd}).");
                continue;
            }

            Assert.NotEqual(a.Id, b.Id);
            Assert.NotEqual(a.Context.ConnectionId, b.Context.ConnectionId);

            // Late work for A, all of it after A's fd went to B.
            try
            {
                await a.Context.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes("LATE-WRITE-FOR-A")).WithTimeout();
            }
            catch (Exception ex) when (ex is ConnectionResetException or ConnectionAbortedException)
            {
                // A's output ended with its reset: the late write may report it.
                output.WriteLine($"Late write for A threw {ex.GetType().Name}.");
            }

            a.Context.Abort(new ConnectionAbortedException("Late abort of A."));
            await a.Context.Transport.Output.CompleteAsync();
            await a.Context.Transport.Input.CompleteAsync();

            a.Release.SetResult();

            // B works and sees nothing of A's: only its own echoes, nothing more, and it is not aborted.
            await RoundTripAsync(clientB, "B-first");
            await RoundTripAsync(clientB, "B-second");
            Assert.Equal(0, clientB.Available);
            Assert.False(b.Closed.IsCompleted, "B was closed by late work for A.");
            Assert.Equal(EpollCloseReason.None, b.Feature.CloseReason);
            Assert.Equal(a.Fd, await b.Feature.WithSocketAsync(static fd => fd).WithTimeout());

            // And B still closes normally.
            clientB.Shutdown(SocketShutdown.Send);
            Assert.Empty(await clientB.ReceiveToEndAsync());
            await b.Closed.WithTimeout();
            b.Release.SetResult();
            return;
        }
    }

    [Fact]
    public async Task Two_hundred_connections_that_reuse_fds_get_two_hundred_different_ids()
    {
        var seen = new List<(ulong Id, int Fd, string ConnectionId)>();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var feature = connection.Features.Get<IEpollConnectionFeature>()!;
            int fd = await feature.WithSocketAsync(static fd => fd);
            lock (seen)
            {
                seen.Add((feature.Id, fd, connection.ConnectionId));
            }

            await Handlers.EchoAsync(connection);
        }, output: output);

        for (int i = 0; i < 200; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await RoundTripAsync(socket, "x");
            socket.Shutdown(SocketShutdown.Send);
            Assert.Empty(await socket.ReceiveToEndAsync());
        }

        Assert.Equal(200, seen.Count);
        Assert.True(seen.Select(s => s.Fd).Distinct().Count() < 200, "The kernel never reused an fd, so the test proved nothing.");
        Assert.Equal(200, seen.Select(s => s.Id).Distinct().Count());
        Assert.Equal(200, seen.Select(s => s.ConnectionId).Distinct().Count());
        Assert.DoesNotContain(seen, s => s.Fd < 0);
    }

    private static async Task RoundTripAsync(Socket socket, string text)
    {
        await socket.SendAllAsync(text);
        Assert.Equal(text, Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(text.Length)));
    }

    /// <summary>Opens /dev/null until the fd it gets is <paramref name="fd"/> (then closes that one): afterwards every
    /// fd below <paramref name="fd"/> is taken and <paramref name="fd"/> is free. False if some fd above was handed out.</summary>
    private static bool OccupyFdsBelow(int fd, List<SafeFileHandle> dummies)
    {
        for (int i = 0; i < 10_000; i++)
        {
            var handle = File.OpenHandle("/dev/null");
            long got = handle.DangerousGetHandle();
            if (got == fd)
            {
                handle.Dispose();
                return true;
            }

            dummies.Add(handle);
            if (got > fd)
            {
                return false;
            }
        }

        return false;
    }
}

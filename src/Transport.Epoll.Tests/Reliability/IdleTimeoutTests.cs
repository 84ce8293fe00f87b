using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>
/// IdleTimeout (libsock's touch): a raw connection with no successful read or write for that long is closed, with the
/// close reason IdleTimeout; every read and every write touches it.
/// </summary>
public sealed class IdleTimeoutTests(ITestOutputHelper output)
{
    private static readonly TimeSpan IdleTimeout = TimeSpan.FromMilliseconds(300);

    /// <summary>
    /// For the tests that keep a connection busy every 100 ms: five gaps' margin, so a test host stalled by the tests
    /// running beside it does not look like a transport that forgot a touch (which would close at this timeout,
    /// well inside the 1.5 s of traffic).
    /// </summary>
    private static readonly TimeSpan BusyIdleTimeout = TimeSpan.FromMilliseconds(500);

    private static readonly TimeSpan BusyFor = TimeSpan.FromMilliseconds(1500);

    /// <summary>Generous for CI: the loop checks every IdleTimeout / 8, so the close comes at 1 to 1.125 × the timeout.</summary>
    private static readonly TimeSpan CloseBound = TimeSpan.FromSeconds(2);

    [Fact]
    public async Task A_silent_connection_is_closed_after_the_idle_timeout_with_reason_IdleTimeout()
    {
        var tracker = new ConnectionTracker();
        await using var server = await StartAsync(tracker.Track(DrainAsync));

        // Started before the connect: the server accepts only after the handshake, so this never undercounts the
        // server's idle time (a continuation that ran late on a busy test machine once made it read 231 of 300 ms).
        var stopwatch = Stopwatch.StartNew();
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var feature = await tracker.Connected.WithTimeout();

        // The client says nothing; the server must close: EOF (or a reset) well before the bound.
        bool eof = await ReceiveEofOrResetAsync(socket, CloseBound + TimeSpan.FromSeconds(1));
        var elapsed = stopwatch.Elapsed;
        output.WriteLine($"Closed after {elapsed.TotalMilliseconds:F0} ms (idle timeout {IdleTimeout.TotalMilliseconds} ms).");
        Assert.True(eof, "The server never closed the silent connection.");
        Assert.True(elapsed < CloseBound, $"The silent connection was closed only after {elapsed.TotalMilliseconds:F0} ms (timeout {IdleTimeout.TotalMilliseconds} ms, bound {CloseBound.TotalMilliseconds} ms).");
        Assert.True(elapsed >= IdleTimeout - TimeSpan.FromMilliseconds(50), $"Closed after {elapsed.TotalMilliseconds:F0} ms, before the idle timeout of {IdleTimeout.TotalMilliseconds} ms.");

        await tracker.Closed.WithTimeout();
        Assert.Equal(EpollCloseReason.IdleTimeout, feature.CloseReason);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => feature.WithSocketAsync(static fd => fd).WithTimeout());
    }

    [Fact]
    public async Task Reads_touch_the_connection_a_client_sending_every_100_ms_is_not_closed()
    {
        // The server only reads (its writes would touch the connection too: Writes_touch_... covers those).
        var tracker = new ConnectionTracker();
        long read = 0;
        await using var server = await StartAsync(tracker.Track(async connection =>
        {
            var input = connection.Transport.Input;
            while (true)
            {
                var result = await input.ReadAsync();
                Interlocked.Add(ref read, result.Buffer.Length);
                input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    return;
                }
            }
        }), BusyIdleTimeout);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        var feature = await tracker.Connected.WithTimeout();

        // 1.5 s of traffic, each gap a fifth of the timeout: the connection stays open.
        var stopwatch = Stopwatch.StartNew();
        var sinceLastSend = Stopwatch.StartNew();
        TimeSpan longestGap = TimeSpan.Zero;
        int sent = 0;
        while (stopwatch.Elapsed < BusyFor)
        {
            longestGap = TimeSpan.FromTicks(Math.Max(longestGap.Ticks, sinceLastSend.Elapsed.Ticks));
            await socket.SendAllAsync(new[] { (byte)sent });
            sinceLastSend.Restart();
            sent++;
            Assert.False(tracker.Closed.IsCompleted, $"Closed ({feature.CloseReason}) after {stopwatch.ElapsedMilliseconds} ms while the client sent every 100 ms (longest gap {longestGap.TotalMilliseconds:F0} ms).");

            // The pace of the client under test: one byte per 100 ms.
            await Task.Delay(100);
        }

        output.WriteLine($"Sent {sent} bytes; longest gap between sends: {longestGap.TotalMilliseconds:F0} ms.");
        Assert.True(await Poll.UntilAsync(() => Interlocked.Read(ref read) == sent), $"The server read {read} of {sent} bytes.");
        Assert.False(tracker.Closed.IsCompleted, $"The connection closed ({feature.CloseReason}) while the client kept sending.");
        Assert.Equal(EpollCloseReason.None, feature.CloseReason);

        // Then the client goes quiet, and the idle timeout applies again.
        Assert.True(await ReceiveEofOrResetAsync(socket, CloseBound + TimeSpan.FromSeconds(1)), "The connection was never closed once the client went quiet.");
        await tracker.Closed.WithTimeout();
        Assert.Equal(EpollCloseReason.IdleTimeout, feature.CloseReason);
    }

    [Fact]
    public async Task Writes_touch_the_connection_a_server_writing_every_100_ms_to_a_silent_client_is_not_closed()
    {
        var tracker = new ConnectionTracker();
        var stopWriting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await StartAsync(tracker.Track(async connection =>
        {
            var writer = connection.Transport.Output;
            for (int i = 0; !stopWriting.Task.IsCompleted; i++)
            {
                var flush = await writer.WriteAsync(new[] { (byte)i });
                if (flush.IsCompleted)
                {
                    return;
                }

                // The pace of the server under test (one byte per 100 ms), not a wait for an event.
                await Task.WhenAny(stopWriting.Task, Task.Delay(100));
            }

            await DrainAsync(connection);
        }), BusyIdleTimeout);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        var feature = await tracker.Connected.WithTimeout();

        // The client never sends; only the server's writes keep the connection alive.
        var stopwatch = Stopwatch.StartNew();
        int received = 0;
        while (stopwatch.Elapsed < BusyFor)
        {
            int n = await socket.ReceiveOnceAsync(new byte[16]);
            Assert.True(n > 0, $"EOF after {stopwatch.ElapsedMilliseconds} ms ({feature.CloseReason}) while the server was writing every 100 ms.");
            received += n;
        }

        Assert.True(received >= 8, $"Only {received} bytes in {BusyFor.TotalSeconds} s.");
        Assert.Equal(EpollCloseReason.None, feature.CloseReason);

        stopWriting.SetResult();
        Assert.True(await ReceiveEofOrResetAsync(socket, CloseBound + TimeSpan.FromSeconds(1)), "The connection was never closed once the server stopped writing.");
        await tracker.Closed.WithTimeout();
        Assert.Equal(EpollCloseReason.IdleTimeout, feature.CloseReason);
    }

    [Fact]
    public async Task Without_IdleTimeout_a_silent_connection_stays_open()
    {
        var tracker = new ConnectionTracker();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, tracker.Track(DrainAsync), output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        var feature = await tracker.Connected.WithTimeout();

        // Four times the timeout the other tests use, in silence: no close (a receive that times out is the pass).
        var receive = socket.ReceiveAsync(new byte[1], SocketFlags.None);
        var first = await Task.WhenAny(receive, Task.Delay(IdleTimeout * 4));
        Assert.NotSame(receive, first);
        Assert.Equal(EpollCloseReason.None, feature.CloseReason);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1000)]
    [InlineData(5)]
    public async Task A_bogus_IdleTimeout_fails_start_up_naming_IdleTimeout(int milliseconds)
    {
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConnectionHandler = DrainAsync,
            Epoll = o => o.IdleTimeout = TimeSpan.FromMilliseconds(milliseconds),
        }));

        var chain = new List<Exception>();
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            chain.Add(e);
        }

        string messages = string.Join(" <- ", chain.Select(e => $"{e.GetType().Name}: {e.Message}"));
        output.WriteLine(messages);
        Assert.Contains(chain, e => e is OptionsValidationException);
        Assert.Contains("IdleTimeout", messages, StringComparison.Ordinal);
    }

    private Task<TestServer> StartAsync(Func<ConnectionContext, Task> handler, TimeSpan? idleTimeout = null)
        => TestServer.StartRawAsync(Transports.Epoll, handler, o => o.IdleTimeout = idleTimeout ?? IdleTimeout, output);

    /// <summary>Reads until Input completes (or fails: an idle close completes it with an error).</summary>
    private static async Task DrainAsync(ConnectionContext connection)
    {
        try
        {
            await Handlers.ReadToEndAsync(connection.Transport.Input);
        }
        catch (ConnectionAbortedException)
        {
        }
        catch (ConnectionResetException)
        {
        }
    }

    /// <summary>True when the peer closed (EOF or reset) within <paramref name="timeout"/>; false when it stayed open.</summary>
    private static async Task<bool> ReceiveEofOrResetAsync(Socket socket, TimeSpan timeout)
    {
        var buffer = new byte[1024];
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token) > 0)
            {
                // Bytes still in flight from before the close.
            }

            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}

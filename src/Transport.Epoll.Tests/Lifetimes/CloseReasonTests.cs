using System.Net.Sockets;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Lifetimes;

/// <summary>Close reasons the kernel decides: a peer that stops taking data outlives TCP_USER_TIMEOUT.</summary>
public sealed class CloseReasonTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_peer_that_keeps_its_window_closed_past_the_user_timeout_closes_with_TimedOut_not_PeerReset()
    {
        // tcp(7), TCP_USER_TIMEOUT: the kernel aborts a connection whose data stays unacknowledged for that long, and
        // (since Linux 5.11) whose zero-window probes go on for that long: the client below never reads.
        var closed = new TaskCompletionSource<(EpollCloseReason Reason, Exception? Error)>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            var epoll = connection.Features.Get<IEpollConnectionFeature>()!;
            var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => fired.TrySetResult());
            var chunk = new byte[64 * 1024];
            try
            {
                // Until the kernel gives up, the write buffer fills and the flush waits.
                while (!(await connection.Transport.Output.WriteAsync(chunk)).IsCompleted)
                {
                }
            }
            catch (Exception)
            {
                // The flush ends with the connection, whichever way.
            }

            await fired.Task;
            closed.TrySetResult((epoll.CloseReason, epoll.CloseError));
        }, o => o.TcpUserTimeout = TimeSpan.FromSeconds(1), output);

        using var client = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
        var (reason, error) = await closed.Task.WithTimeout(TimeSpan.FromSeconds(30));
        output.WriteLine($"{reason}: {error?.Message}");
        Assert.Equal(EpollCloseReason.TimedOut, reason);
    }
}

using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// A peer that reads slowly or not at all, through a tiny receive window. Without a bound, each sendmsg or sendfile
/// into its socket hands the kernel megabytes (the send buffer grows by itself) that the peer will take minutes to read:
/// work the loop does while its other connections wait, and kernel memory held for nothing. TCP_NOTSENT_LOWAT bounds
/// what the kernel takes to about the watermark, which the bytes the kernel counted as sent show.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class SlowReaderTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    private const int Size = 8 * 1024 * 1024;
    private const int LowWatermark = 64 * 1024;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_peer_that_does_not_read_is_handed_about_the_not_sent_watermark(bool sendFile)
    {
        string path = files.Create(Size);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            try
            {
                if (sendFile)
                {
                    await connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(path, 0, Size);
                }
                else
                {
                    await connection.Transport.Output.WriteAsync(new byte[Size]);
                }
            }
            catch (ConnectionAbortedException)
            {
                // The client resets at the end of the test, before the file is all sent.
            }
        }, o =>
        {
            o.TcpNotSentLowWatermark = LowWatermark;
            o.MaxWriteBufferSize = Size;
        }, output);

        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
        Assert.True(await Poll.UntilAsync(() => SentBytes(server) > 0), "Nothing was sent.");
        long sent = await Poll.UntilStableAsync(() => SentBytes(server), TimeSpan.FromSeconds(1));
        output.WriteLine($"the kernel took {sent} bytes for a peer that does not read");

        // The watermark, what the peer's window and receive queue took, and one send's overshoot: well under the
        // megabyte a single unbounded send hands the kernel here.
        Assert.InRange(sent, 1, 4 * LowWatermark);
        socket.Reset();
    }

    private static long SentBytes(TestServer server)
        => TransportMetrics.CollectAsync(server).GetAwaiter().GetResult().GetValueOrDefault("epoll.bytes.sent");
}

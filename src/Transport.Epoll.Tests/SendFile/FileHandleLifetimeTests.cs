using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// The file handle of a SendFileAsync and the socket duplicates of its cold-file workers: neither outlives the send,
/// whatever the caller does with its handle, and the caller never gets control back while the loop still reads it.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class FileHandleLifetimeTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    /// <summary>
    /// A caller that disposes its handle while the send is in flight, its cold slices going out from workers (each
    /// takes a reference on the handle and duplicates the socket): the transport's own reference keeps the descriptor
    /// open, the file arrives whole, and no duplicate or descriptor outlives the send.
    /// </summary>
    [Fact]
    public async Task A_handle_disposed_while_its_cold_file_goes_out_leaks_nothing_and_the_file_arrives_whole()
    {
        const long size = 8L * 1024 * 1024;
        string path = files.Create(size, "disposed-cold.bin");
        string expected = TestFiles.Hash(path, 0, size);
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            // Written pages must reach the disk before they can be dropped from the cache.
            stream.Flush(flushToDisk: true);
        }

        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            ReadResultOf(await connection.Transport.Input.ReadAsync(), connection);
            var file = File.OpenHandle(path);
            Assert.Equal(0, Libc.EvictFromPageCache((int)file.DangerousGetHandle()));
            Task send = connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(file, 0, size);
            file.Dispose();
            await send;
            await connection.Transport.Output.CompleteAsync();
        }, output: output);

        int baseline = (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenFdCount(), TimeSpan.FromMilliseconds(300));
        var before = ProcessInfo.OpenFds();
        using (var client = await Client.ConnectAsync(server.EndPoint))
        {
            await client.SendAllAsync("go\n");
            byte[] received = await client.ReceiveToEndAsync((int)size + 1, Timeouts.Bulk);
            Assert.Equal(size, received.Length);
            Assert.Equal(expected, Client.Sha256(received));
        }

        int after = 0;
        Assert.True(
            await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline),
            $"{after - baseline} fds more than before the send: {ProcessInfo.DescribeNewFds(before)}");
        AssertNoErrors(server);
    }

    /// <summary>
    /// Kestrel refuses a placeholder (here: the response's Content-Length is one byte short of the file) while the
    /// file is still going out to a client that does not read: SendFileAsync must end its job and let go of the file
    /// before it throws, not leave the loop sending from a handle its caller already disposed.
    /// </summary>
    [Fact]
    public async Task When_Kestrel_refuses_a_placeholder_SendFileAsync_throws_only_after_the_file_is_let_go()
    {
        const long size = 64L * 1024 * 1024;
        string path = files.Create(size, "refused-placeholders.bin");
        var outcome = new TaskCompletionSource<(Exception? Error, bool FileOpen)>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            Output = output,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/short", async (HttpContext context) =>
                {
                    context.Response.ContentLength = size - 1;
                    await context.Response.StartAsync();
                    try
                    {
                        await context.Response.SendFileAsync(path, 0, size, context.RequestAborted);
                        outcome.TrySetResult((null, IsOpen(path)));
                    }
                    catch (InvalidOperationException ex)
                    {
                        outcome.TrySetResult((ex, IsOpen(path)));

                        // The application's own bug, handled: nothing for Kestrel to log.
                        context.Abort();
                    }
                });
            },
        });

        using var client = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
        await client.SendAllAsync("GET /short HTTP/1.1\r\nHost: x\r\n\r\n");
        var (error, fileOpen) = await outcome.Task.WithTimeout(Timeouts.Bulk);
        Assert.Contains("Content-Length", Assert.IsType<InvalidOperationException>(error).Message, StringComparison.Ordinal);
        Assert.False(fileOpen, "SendFileAsync threw while the transport still held the file open (its job was still running).");
        AssertNoErrors(server);
    }

    private static bool IsOpen(string path) => ProcessInfo.OpenFds().ContainsValue(path);

    private static void ReadResultOf(System.IO.Pipelines.ReadResult result, ConnectionContext connection)
        => connection.Transport.Input.AdvanceTo(result.Buffer.End);

    private static void AssertNoErrors(TestServer server)
    {
        var errors = server.Logs.Entries.Where(e => e.IsFailure).ToList();
        Assert.True(errors.Count == 0, $"{errors.Count} errors logged:\n{string.Join("\n", errors.Take(3))}");
    }
}

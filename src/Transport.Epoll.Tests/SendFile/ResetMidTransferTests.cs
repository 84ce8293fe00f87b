using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

/// <summary>
/// A client that goes away mid-response (a closed tab, a cancelled download) is routine: the server must log nothing
/// at Error (production servers page on it) and keep no fd or connection of it. Kestrel logs an application's failure
/// at debug only when it already knows the connection went away (its ConnectionClosed callback ran), so the transport
/// must never let the application see the failure first.
/// </summary>
/// <remarks>
/// Each request registers a ConnectionClosed callback of its own that holds up the callbacks registered before it
/// (Kestrel's among them: a token runs its callbacks last registered first) until the request is over, or a second at
/// most: what a slow callback or a busy thread pool does by chance, made certain.
/// </remarks>
[Collection(SerialCollection.Name)]
public sealed class ResetMidTransferTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{
    private const int Clients = 24;
    private const int FdTolerance = 8;
    private static readonly TimeSpan s_slowCallback = TimeSpan.FromSeconds(1);

    [Theory, BothTransports]
    public async Task Clients_that_reset_mid_download_leave_no_error_and_no_fd_behind(string transport)
    {
        const long size = 64L * 1024 * 1024;
        string path = files.Create(size, "reset-download.bin");
        var requests = new RequestCounter(holdConnectionClosed: true);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            Output = output,
            ConfigureApp = app =>
            {
                app.UseEpollSendFile();
                app.MapGet("/file", (HttpContext context) =>
                {
                    requests.Track(context);
                    return Results.File(path, "application/octet-stream");
                });
                app.MapGet("/ok", () => "ok");
            },
        });

        await RunAsync(server, requests, async (client, i) =>
        {
            await client.SendAllAsync("GET /file HTTP/1.1\r\nHost: x\r\n\r\n");

            // Gone once the response started: after its first bytes, or part way through the file.
            long readBefore = (i % 3) switch { 0 => 1, 1 => 256 * 1024, _ => 2 * 1024 * 1024 };
            await ReceiveAtLeastAsync(client, readBefore);
        });
    }

    /// <summary>
    /// An echo that handles the client going away as the sample's does (a reset aborts the request). On both transports
    /// the reset reaches the application before Kestrel's ConnectionClosed callback (the input completes, then
    /// ConnectionClosed is queued), so an application that lets it escape gets it logged as an error, on Sockets too.
    /// </summary>
    [Theory, BothTransports]
    public Task Clients_that_reset_mid_upload_leave_no_error_and_no_fd_behind(string transport)
        => UploadAsync(transport, async context =>
        {
            try
            {
                // Through the streams: each read copies and advances at once. PipeReader.CopyToAsync awaits the write
                // between its read and its AdvanceTo, and Kestrel's body reader fails now and then (on either transport)
                // when the connection closes in that gap (ArgumentOutOfRangeException in TrackConsumedAndExaminedBytes).
                await context.Request.Body.CopyToAsync(context.Response.Body, context.RequestAborted);
            }
            catch (ConnectionResetException)
            {
                context.Abort();
            }
        });

    private async Task UploadAsync(string transport, Func<HttpContext, Task> echo)
    {
        var requests = new RequestCounter(holdConnectionClosed: false);
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            Output = output,
            ConfigureApp = app =>
            {
                app.MapPost("/echo", (HttpContext context) =>
                {
                    requests.Track(context);
                    context.Response.ContentLength = context.Request.ContentLength;
                    return echo(context);
                });
                app.MapGet("/ok", () => "ok");
            },
        });

        await RunAsync(server, requests, async (client, i) =>
        {
            const int length = 8 * 1024 * 1024;
            await client.SendAllAsync($"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
            int part = (i % 3) switch { 0 => 1000, 1 => 256 * 1024, _ => 2 * 1024 * 1024 };
            await client.SendAllAsync(new byte[part]);

            // Some wait for the echo to come back before they go, some go at once.
            if (i % 2 == 0)
            {
                await ReceiveAtLeastAsync(client, 1);
            }
        });
    }

    private async Task RunAsync(TestServer server, RequestCounter requests, Func<Socket, int, Task> beforeReset)
    {
        // Warm: the first request pays for what the process opens once.
        await GetOkAsync(server);
        int baseline = (int)await Poll.UntilStableAsync(() => ProcessInfo.OpenFdCount(), TimeSpan.FromMilliseconds(300));
        var before = ProcessInfo.OpenFds();
        int tableBaseline = ConnectionTable.Shared.Count;

        await Task.WhenAll(Enumerable.Range(0, Clients).Select(async i =>
        {
            using var client = await Client.ConnectAsync(server.EndPoint);
            await beforeReset(client, i);
            client.Reset();
        })).WithTimeout(Timeouts.Bulk);

        // Every request the application saw has ended (Kestrel has logged what it logs for it by then).
        Assert.True(
            await Poll.UntilAsync(() => requests.Started > 0 && requests.Completed == requests.Started, Timeouts.Bulk),
            $"{requests.Started - requests.Completed} of {requests.Started} requests never ended.");

        int after = 0;
        bool settled = await Poll.UntilAsync(() => (after = ProcessInfo.OpenFdCount()) <= baseline + FdTolerance);
        Assert.True(settled, $"{after - baseline} fds more than before {Clients} reset clients (baseline {baseline}): {ProcessInfo.DescribeNewFds(before)}");
        Assert.True(
            await Poll.UntilAsync(() => ConnectionTable.Shared.Count == tableBaseline),
            $"{ConnectionTable.Shared.Count - tableBaseline} connection-table slots still taken after the clients reset.");

        var errors = server.Logs.Entries.Where(e => e.IsFailure).ToList();
        Assert.True(errors.Count == 0, $"{errors.Count} errors logged for clients that reset:\n{string.Join("\n", errors.Take(3))}");

        // And the server still serves.
        await GetOkAsync(server);
    }

    private static async Task GetOkAsync(TestServer server)
    {
        using var client = HttpClients.Create(server.BaseAddress);
        Assert.Equal("ok", await client.GetStringAsync("/ok").WithTimeout());
    }

    private static async Task ReceiveAtLeastAsync(Socket client, long count)
    {
        var buffer = new byte[64 * 1024];
        long received = 0;
        while (received < count)
        {
            int n = await client.ReceiveOnceAsync(buffer);
            if (n == 0)
            {
                return;
            }

            received += n;
        }
    }

    /// <summary>Counts requests in and out, and holds up ConnectionClosed's earlier callbacks while each one runs.</summary>
    private sealed class RequestCounter(bool holdConnectionClosed)
    {
        private int _started;
        private int _completed;

        public int Started => Volatile.Read(ref _started);

        public int Completed => Volatile.Read(ref _completed);

        public void Track(HttpContext context)
        {
            Interlocked.Increment(ref _started);
            var over = new ManualResetEventSlim();
            context.Response.OnCompleted(() =>
            {
                // After Kestrel reported the application's failure, if it did.
                over.Set();
                Interlocked.Increment(ref _completed);
                return Task.CompletedTask;
            });
            if (holdConnectionClosed)
            {
                context.Features.Get<IConnectionLifetimeFeature>()!.ConnectionClosed.Register(() => over.Wait(s_slowCallback));
            }
        }
    }
}

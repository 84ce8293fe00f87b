using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.SendFile;

public sealed class RawSendFileTests(ITestOutputHelper output, TestFiles files) : IClassFixture<TestFiles>
{

    private static async Task<byte[]> AskAsync(Socket socket, string path, long offset, long count)
    {
        await socket.SendAllAsync($"{path} {offset} {count}\n");
        byte[] begin = await socket.ReceiveExactlyAsync(FileProtocol.Begin.Length);
        Assert.Equal("BEGIN\n", Encoding.ASCII.GetString(begin));
        byte[] body = await socket.ReceiveExactlyAsync(checked((int)count), Timeouts.Bulk);
        byte[] end = await socket.ReceiveExactlyAsync(FileProtocol.End.Length);
        Assert.Equal("END\n", Encoding.ASCII.GetString(end));
        return body;
    }

    private Task<TestServer> StartAsync(Action<EpollTransportOptions>? epoll = null, Func<ConnectionContext, string, long, long, Task>? send = null)
        => TestServer.StartRawAsync(Transports.Epoll, c => FileProtocol.ServeAsync(c, send), epoll, output);

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(4097)]
    [InlineData(65_537)]
    [InlineData(3_000_001)]
    public async Task Whole_files_arrive_byte_identical_between_the_bytes_written_around_them(long size)
    {
        string path = files.Create(size);
        await using var server = await StartAsync();
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var metrics = await TransportMetrics.CollectAsync(server, async () =>
        {
            byte[] body = await AskAsync(socket, path, 0, size);
            Assert.Equal(TestFiles.Hash(path, 0, size), Client.Sha256(body));
        });
        Assert.Equal(size, metrics.GetValueOrDefault("epoll.sendfile.bytes"));
        Assert.Equal(0, metrics.GetValueOrDefault("epoll.sendfile.fallback_bytes"));
    }

    [Fact]
    public async Task Ranges_and_many_requests_on_one_connection_stay_in_order()
    {
        string path = files.Create(5_000_000);
        await using var server = await StartAsync();
        using var socket = await Client.ConnectAsync(server.EndPoint);
        var random = new Random(7);
        for (int i = 0; i < 40; i++)
        {
            long offset = random.NextInt64(0, 5_000_000);
            long count = random.NextInt64(0, Math.Min(400_000, 5_000_000 - offset));
            byte[] body = await AskAsync(socket, path, offset, count);
            Assert.Equal(TestFiles.Hash(path, offset, count), Client.Sha256(body));
        }
    }

    [Fact]
    public async Task The_path_overload_opens_and_closes_the_file_itself()
    {
        string path = files.Create(123_457);
        await using var server = await StartAsync(send: (connection, p, offset, count) =>
            connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(p, offset, count));
        using var socket = await Client.ConnectAsync(server.EndPoint);
        Assert.Equal(TestFiles.Hash(path, 1000, 100_000), Client.Sha256(await AskAsync(socket, path, 1000, 100_000)));

        // Closed after the call: no descriptor of the process still points at the file.
        Assert.DoesNotContain(Directory.GetFiles("/proc/self/fd"), fd => new FileInfo(fd).LinkTarget == path);
    }

    [Fact]
    public async Task One_open_file_goes_to_many_connections_at_once()
    {
        string path = files.Create(2_000_000);
        using var shared = File.OpenHandle(path);
        await using var server = await StartAsync(send: async (connection, _, offset, count) =>
            await connection.Features.Get<IConnectionSendFileFeature>()!.SendFileAsync(shared, offset, count));
        string expected = TestFiles.Hash(path, 0, 2_000_000);
        await Task.WhenAll(Enumerable.Range(0, 16).Select(async _ =>
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            Assert.Equal(expected, Client.Sha256(await AskAsync(socket, path, 0, 2_000_000)));
        })).WithTimeout(Timeouts.Bulk);
        Assert.False(shared.IsClosed);
    }
}

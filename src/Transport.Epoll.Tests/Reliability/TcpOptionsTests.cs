using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>Dead-peer detection: the keepalive and TCP_USER_TIMEOUT options reach every accepted socket, read back with getsockopt.</summary>
public sealed class TcpOptionsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Keepalive_and_user_timeout_options_are_set_on_accepted_sockets()
    {
        var options = await ReadSocketOptionsAsync(o =>
        {
            o.TcpKeepAliveTime = TimeSpan.FromSeconds(30);
            o.TcpKeepAliveInterval = TimeSpan.FromSeconds(5);
            o.TcpKeepAliveProbeCount = 3;
            o.TcpUserTimeout = TimeSpan.FromSeconds(10);
        });

        Assert.Equal(1, options[nameof(Libc.SO_KEEPALIVE)]);
        Assert.Equal(30, options[nameof(Libc.TCP_KEEPIDLE)]);
        Assert.Equal(5, options[nameof(Libc.TCP_KEEPINTVL)]);
        Assert.Equal(3, options[nameof(Libc.TCP_KEEPCNT)]);
        Assert.Equal(10_000, options[nameof(Libc.TCP_USER_TIMEOUT)]);
        Assert.Equal(1, options[nameof(Libc.TCP_NODELAY)]);
    }

    [Fact]
    public async Task Without_the_options_keepalive_is_off_and_the_user_timeout_is_the_kernels()
    {
        var options = await ReadSocketOptionsAsync(_ => { });

        Assert.Equal(0, options[nameof(Libc.SO_KEEPALIVE)]);
        Assert.Equal(0, options[nameof(Libc.TCP_USER_TIMEOUT)]);

        // Not a kernel default: a slow reader must not be handed megabytes (see SlowReaderTests).
        Assert.Equal(128 * 1024, options[nameof(Libc.TCP_NOTSENT_LOWAT)]);
    }

    /// <summary>Starts an epoll server with <paramref name="configure"/>, connects once, and reads the server socket's options from its fd.</summary>
    private async Task<Dictionary<string, int>> ReadSocketOptionsAsync(Action<EpollTransportOptions> configure)
    {
        var read = new TaskCompletionSource<Dictionary<string, int>>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            try
            {
                read.TrySetResult(await connection.Features.Get<IEpollConnectionFeature>()!.WithSocketAsync(static fd => new Dictionary<string, int>
                {
                    [nameof(Libc.SO_KEEPALIVE)] = Get(fd, Libc.SOL_SOCKET, Libc.SO_KEEPALIVE),
                    [nameof(Libc.TCP_KEEPIDLE)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPIDLE),
                    [nameof(Libc.TCP_KEEPINTVL)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPINTVL),
                    [nameof(Libc.TCP_KEEPCNT)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPCNT),
                    [nameof(Libc.TCP_USER_TIMEOUT)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_USER_TIMEOUT),
                    [nameof(Libc.TCP_NODELAY)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_NODELAY),
                    [nameof(Libc.TCP_NOTSENT_LOWAT)] = Get(fd, Libc.IPPROTO_TCP, Libc.TCP_NOTSENT_LOWAT),
                }));
            }
            catch (Exception e)
            {
                read.TrySetException(e);
            }

            // Keep the fd open until the client has its answer and closes.
            await Handlers.ReadToEndAsync(connection.Transport.Input);
        }, configure, output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        var options = await read.Task.WithTimeout();
        output.WriteLine(string.Join(", ", options.Select(p => $"{p.Key}={p.Value}")));
        return options;
    }

    private static int Get(int fd, int level, int name)
    {
        if (Libc.GetIntOption(fd, level, name, out int value) != 0)
        {
            throw new InvalidOperationException($"getsockopt({fd}, {level}, {name}) failed: {Errno.Last}.");
        }

        return value;
    }
}

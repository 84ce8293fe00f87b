using System.Buffers;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class BackpressureTests(ITestOutputHelper output)
{
    private const int MaxWriteBufferSize = 64 * 1024;
    private const int MaxReadBufferSize = 64 * 1024;

    [Theory, BothTransports]
    public async Task A_peer_that_never_reads_stalls_the_writer_at_a_bounded_amount(string transport)
    {
        long written = 0;
        long stopAt = long.MaxValue;
        int flushPending = 0;
        byte[] chunk = Client.RandomBytes(16 * 1024, seed: 16);

        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            MaxWriteBufferSize = MaxWriteBufferSize,
            Output = output,
            ConnectionHandler = async connection =>
            {
                var writer = connection.Transport.Output;
                // The cap keeps a transport that ignores MaxWriteBufferSize from eating the machine's memory: it then
                // "stalls" at the cap, far above the bound, and the test fails.
                while (Interlocked.Read(ref written) < Math.Min(Interlocked.Read(ref stopAt), 64 * 1024 * 1024))
                {
                    writer.Write(chunk);
                    Interlocked.Add(ref written, chunk.Length);
                    Volatile.Write(ref flushPending, 1);
                    var flush = await writer.FlushAsync();
                    Volatile.Write(ref flushPending, 0);
                    if (flush.IsCompleted || flush.IsCanceled)
                    {
                        return;
                    }
                }

                await writer.CompleteAsync();
            },
        });

        // A small, fixed receive buffer on the client (no autotuning) keeps the kernel's share small and known.
        const int clientReceiveBuffer = 64 * 1024;
        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = clientReceiveBuffer);

        long stalledAt = await Poll.UntilStableAsync(() => Interlocked.Read(ref written), TimeSpan.FromSeconds(1));
        long bound = MaxWriteBufferSize + ProcessInfo.TcpBufferMax("tcp_wmem") + (4 * clientReceiveBuffer) + (1024 * 1024);
        output.WriteLine($"Writer stalled after {stalledAt:N0} bytes; bound {bound:N0}.");
        Assert.Equal(1, Volatile.Read(ref flushPending));
        Assert.True(stalledAt < bound, $"The server buffered {stalledAt:N0} bytes for a peer that does not read (bound {bound:N0}).");
        Assert.True(stalledAt < 16 * 1024 * 1024);

        // Reading on the client releases the writer: it writes 1 MiB more, then completes; every byte is what was sent.
        Interlocked.Exchange(ref stopAt, stalledAt + (1024 * 1024));
        var buffer = new byte[chunk.Length];
        long received = 0;
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        while (true)
        {
            int offsetInChunk = (int)(received % chunk.Length);
            int n = await socket.ReceiveAsync(buffer.AsMemory(0, chunk.Length - offsetInChunk), SocketFlags.None, cts.Token);
            if (n == 0)
            {
                break;
            }

            Assert.True(chunk.AsSpan(offsetInChunk, n).SequenceEqual(buffer.AsSpan(0, n)), $"Wrong bytes at offset {received}.");
            received += n;
        }

        Assert.True(received > stalledAt, "The writer did not resume once the client read.");
        Assert.Equal(Interlocked.Read(ref written), received);
    }

    [Theory, BothTransports]
    public async Task MaxReadBufferSize_stops_reading_from_a_fast_peer_until_the_application_reads(string transport)
    {
        var startReading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var verified = new TaskCompletionSource<(long Count, long FirstBad)>(TaskCreationOptions.RunContinuationsAsynchronously);
        const int total = 48 * 1024 * 1024;

        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = transport,
            MaxReadBufferSize = MaxReadBufferSize,
            Output = output,
            ConnectionHandler = async connection =>
            {
                await startReading.Task;
                long count = 0, firstBad = -1;
                var input = connection.Transport.Input;
                while (true)
                {
                    var result = await input.ReadAsync();
                    foreach (var segment in result.Buffer)
                    {
                        var span = segment.Span;
                        for (int i = 0; i < span.Length; i++)
                        {
                            if (firstBad < 0 && span[i] != Pattern(count + i))
                            {
                                firstBad = count + i;
                            }
                        }

                        count += span.Length;
                    }

                    input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        break;
                    }
                }

                verified.TrySetResult((count, firstBad));
            },
        });

        const int clientSendBuffer = 64 * 1024;
        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.SendBufferSize = clientSendBuffer);
        byte[] data = new byte[total];
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = Pattern(i);
        }

        long sent = 0;
        using var sendCts = Timeouts.Cts(Timeouts.Bulk);
        var sending = Task.Run(async () =>
        {
            while (sent < total)
            {
                int n = await socket.SendAsync(data.AsMemory((int)sent, (int)Math.Min(64 * 1024, total - sent)), SocketFlags.None, sendCts.Token);
                Interlocked.Add(ref sent, n);
            }
        });

        long stalledAt = await Poll.UntilStableAsync(() => Interlocked.Read(ref sent), TimeSpan.FromSeconds(1));
        long bound = MaxReadBufferSize + ProcessInfo.TcpBufferMax("tcp_rmem") + (4 * clientSendBuffer) + (1024 * 1024);
        output.WriteLine($"Client send stalled after {stalledAt:N0} bytes; bound {Math.Min(bound, 16 * 1024 * 1024):N0}.");
        Assert.False(sending.IsCompleted, "The client sent everything to a server that does not read.");
        Assert.True(stalledAt < 16 * 1024 * 1024 && stalledAt < bound, $"The server took {stalledAt:N0} bytes without the application reading.");

        startReading.SetResult();
        await sending.WithTimeout(Timeouts.Bulk);
        socket.Shutdown(SocketShutdown.Send);
        var (count, firstBad) = await verified.Task.WithTimeout(Timeouts.Bulk);
        Assert.Equal(total, count);
        Assert.Equal(-1, firstBad);
    }

    [Theory, BothTransports]
    public async Task A_slow_reader_with_a_tiny_receive_buffer_gets_every_byte_in_order(string transport)
    {
        const int size = 4 * 1024 * 1024;
        byte[] data = Client.RandomBytes(size, seed: 44);
        await using var server = await TestServer.StartRawAsync(transport, async connection =>
        {
            if (connection.Features.Get<IEpollConnectionFeature>() is { } epoll)
            {
                // A tiny SO_SNDBUF on the server's socket as well (only epoll exposes the fd).
                Assert.Equal(0, await epoll.WithSocketAsync(static fd => Libc.SetIntOption(fd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, 4096)));
            }

            // Large writes into a 4 KiB window: the transport's sends are partial most of the time.
            for (int offset = 0; offset < size; offset += 256 * 1024)
            {
                var flush = await connection.Transport.Output.WriteAsync(data.AsMemory(offset, 256 * 1024));
                if (flush.IsCompleted)
                {
                    return;
                }
            }

            await connection.Transport.Output.CompleteAsync();
        }, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 4096);
        var received = new byte[size + 1];
        int total = 0, reads = 0;
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        while (true)
        {
            int n = await socket.ReceiveAsync(received.AsMemory(total, Math.Min(1024, received.Length - total)), SocketFlags.None, cts.Token);
            if (n == 0)
            {
                break;
            }

            total += n;
            Assert.True(total <= size, "More bytes than the server wrote.");

            // The load pattern: a slow reader, pausing now and then.
            if (++reads % 64 == 0)
            {
                await Task.Delay(1, cts.Token);
            }
        }

        Assert.Equal(size, total);
        Assert.True(data.AsSpan().SequenceEqual(received.AsSpan(0, total)), "The bytes arrived changed or out of order.");
        if (Transports.IsEpoll(transport))
        {
            // The test is only worth something if the kernel really took part of a write and the rest waited for EPOLLOUT.
            var metrics = await TransportMetrics.CollectAsync(server);
            output.WriteLine($"partial writes: {metrics.GetValueOrDefault("epoll.writes.partial")}, EAGAIN: {metrics.GetValueOrDefault("epoll.eagain")}");
            Assert.True(metrics.GetValueOrDefault("epoll.writes.partial") > 10, "Hardly any partial write happened.");
        }
    }

    private static byte Pattern(long i) => (byte)((i * 31) + (i >> 16));
}

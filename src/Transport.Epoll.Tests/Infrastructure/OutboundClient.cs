using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Helpers for the outbound connection factory's tests.</summary>
public static class OutboundClient
{
    /// <summary>A standalone factory (its own loops) with <paramref name="configure"/> applied to two loops.</summary>
    public static EpollConnectionFactory NewFactory(Action<EpollTransportOptions>? configure = null)
    {
        var options = new EpollTransportOptions { ThreadCount = 2 };
        configure?.Invoke(options);
        return new EpollConnectionFactory(options);
    }

    /// <summary>Writes <paramref name="data"/>, completes the output (FIN), and reads until the peer's FIN.</summary>
    public static async Task<byte[]> SendThenReadToEndAsync(ConnectionContext connection, ReadOnlyMemory<byte> data, TimeSpan? timeout = null)
    {
        Task<byte[]> read = Handlers.ReadToEndAsync(connection.Transport.Input);
        if (!data.IsEmpty)
        {
            await connection.Transport.Output.WriteAsync(data).AsTask().WithTimeout(timeout);
        }

        await connection.Transport.Output.CompleteAsync().AsTask().WithTimeout(timeout);
        return await read.WithTimeout(timeout ?? Timeouts.Bulk);
    }

    /// <summary>
    /// Waits (at most <paramref name="timeout"/>) for a task that is expected to fail with a <see cref="TimeoutException"/>
    /// of its own, and returns it finished: <see cref="Timeouts.WithTimeout(Task, TimeSpan?, string?)"/> would take that
    /// exception for its own.
    /// </summary>
    public static async Task<T> FinishedAsync<T>(T task, TimeSpan? timeout = null) where T : Task
    {
        Task winner = await Task.WhenAny(task, Task.Delay(timeout ?? Timeouts.Default));
        if (winner != task)
        {
            throw new InvalidOperationException($"The task did not finish within {(timeout ?? Timeouts.Default).TotalSeconds} s.");
        }

        return task;
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes (fails if the input ends first).</summary>
    public static async Task<byte[]> ReadExactlyAsync(ConnectionContext connection, int count)
    {
        var input = connection.Transport.Input;
        var buffer = new ArrayBufferWriter<byte>(count);
        while (buffer.WrittenCount < count)
        {
            ReadResult result = await input.ReadAsync().AsTask().WithTimeout();
            ReadOnlySequence<byte> slice = result.Buffer.Slice(0, Math.Min(result.Buffer.Length, count - buffer.WrittenCount));
            foreach (ReadOnlyMemory<byte> segment in slice)
            {
                buffer.Write(segment.Span);
            }

            input.AdvanceTo(slice.End);
            if (result.IsCompleted && buffer.WrittenCount < count)
            {
                throw new EndOfStreamException($"The input ended after {buffer.WrittenCount} of {count} bytes.");
            }
        }

        return buffer.WrittenSpan.ToArray();
    }
}

/// <summary>
/// A TCP listener on 127.0.0.1 that answers no SYN: listen(2) with a backlog of 0 (the kernel queues one connection;
/// a full accept queue makes it drop SYNs, tcp_conn_request), filled by clients that are never accepted. A connect to
/// it hangs until the connector gives up: the timeout and the cancellation tests' peer.
/// </summary>
public sealed class FullBacklogListener : IDisposable
{
    private readonly Socket _listener;
    private readonly List<Socket> _fillers = [];

    private FullBacklogListener(Socket listener)
    {
        _listener = listener;
        EndPoint = (IPEndPoint)listener.LocalEndPoint!;
    }

    public IPEndPoint EndPoint { get; }

    public static async Task<FullBacklogListener> StartAsync()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        socket.Listen(0);
        var listener = new FullBacklogListener(socket);
        try
        {
            // Fill until a connect does not complete: on loopback a connect that is not dropped completes in
            // microseconds, so half a second without an answer means the SYN was dropped.
            for (int i = 0; i < 16; i++)
            {
                var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                listener._fillers.Add(filler);
                Task connect = filler.ConnectAsync(listener.EndPoint);
                if (await Task.WhenAny(connect, Task.Delay(TimeSpan.FromMilliseconds(500))) != connect)
                {
                    return listener;
                }

                await connect;
            }

            throw new InvalidOperationException("The backlog of a listen(fd, 0) socket never filled: 16 connects completed.");
        }
        catch
        {
            listener.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (Socket filler in _fillers)
        {
            filler.Dispose();
        }

        _listener.Dispose();
    }
}

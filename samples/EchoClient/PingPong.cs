using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;

namespace EchoClient;

/// <summary>
/// One connection's ping-pong: send a message, read until all of it came back (checking every byte), send again. One
/// message in flight per connection, as benchmarks/load/tcpload.c's pingpong mode does, so the two compare.
/// </summary>
internal static class PingPong
{
    public const int Warming = 0;
    public const int Measuring = 1;
    public const int Stopping = 2;

    /// <summary>Runs until <paramref name="phase"/> says stop; the round-trip times measured go to <paramref name="latencies"/> (Stopwatch ticks).</summary>
    public static async Task RunAsync(ConnectionContext connection, ReadOnlyMemory<byte> message, StrongBox<int> phase, List<long> latencies)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        while (Volatile.Read(ref phase.Value) != Stopping)
        {
            long sent = Stopwatch.GetTimestamp();
            FlushResult flush = await output.WriteAsync(message);
            if (flush.IsCompleted)
            {
                throw new IOException("The server stopped reading.");
            }

            int received = 0;
            while (received < message.Length)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> echoed = result.Buffer.Slice(0, Math.Min(result.Buffer.Length, message.Length - received));
                foreach (ReadOnlyMemory<byte> segment in echoed)
                {
                    if (!segment.Span.SequenceEqual(message.Span.Slice(received, segment.Length)))
                    {
                        throw new InvalidDataException($"Connection {connection.ConnectionId}: the echo differs from what was sent.");
                    }

                    received += segment.Length;
                }

                input.AdvanceTo(echoed.End);
                if (result.IsCompleted && received < message.Length)
                {
                    throw new EndOfStreamException($"Connection {connection.ConnectionId}: the server closed after {received} of {message.Length} bytes.");
                }
            }

            if (Volatile.Read(ref phase.Value) == Measuring)
            {
                latencies.Add(Stopwatch.GetTimestamp() - sent);
            }
        }
    }

    /// <summary>Half-closes (our FIN), reads what is left until the server's FIN, and disposes.</summary>
    public static async Task CloseAsync(ConnectionContext connection)
    {
        await connection.Transport.Output.CompleteAsync();
        PipeReader input = connection.Transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await connection.DisposeAsync();
    }
}

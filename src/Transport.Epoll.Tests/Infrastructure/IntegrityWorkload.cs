using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>How one operation of the integrity workload ended.</summary>
public enum Outcome
{
    /// <summary>Every byte came back, in order.</summary>
    Intact,

    /// <summary>The connection failed with a reset or an early EOF, and every byte received before was right.</summary>
    FailedCleanly,

    /// <summary>Nothing happened for the whole timeout.</summary>
    Hung,

    /// <summary>Bytes came back changed, reordered, or more than were sent (or a wrong status).</summary>
    Corrupted,
}

public sealed record OperationResult(string Name, Outcome Outcome, string Detail)
{
    public override string ToString() => $"{Name}: {Outcome} {Detail}";
}

/// <summary>
/// HTTP POST /echo with random bodies (Content-Length and chunked), keep-alive and pipelined GETs, and raw echo with a
/// half-close, all at once against the sample; each operation reports how it ended instead of throwing, so a run with
/// resets injected can tell a clean failure from a hang or a corruption.
/// </summary>
public static class IntegrityWorkload
{
    public const int MaxBodySize = 512 * 1024;

    /// <summary>How long one operation may take before it counts as hung (faults make everything slower).</summary>
    public static readonly TimeSpan OperationTimeout = TimeSpan.FromSeconds(20);

    public static async Task<IReadOnlyList<OperationResult>> RunAsync(SampleProcess sample, int seed)
    {
        var rng = new Random(seed);
        var operations = new List<Task<OperationResult>>();

        using var http = new HttpClient(HttpClients.Handler(maxConnectionsPerServer: 4))
        {
            BaseAddress = sample.BaseAddress,
            Timeout = Timeout.InfiniteTimeSpan,
            DefaultRequestVersion = HttpVersion.Version11,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        // Sizes: the extremes, then random up to 512 KiB.
        int[] sizes = [0, 1, MaxBodySize, .. Enumerable.Range(0, 9).Select(_ => rng.Next(0, MaxBodySize + 1))];
        for (int i = 0; i < sizes.Length; i++)
        {
            operations.Add(PostEchoAsync(http, $"POST /echo #{i} ({sizes[i]} bytes, {(i % 2 == 0 ? "Content-Length" : "chunked")})", Client.RandomBytes(sizes[i], seed * 1000 + i), chunked: i % 2 == 1));
        }

        for (int i = 0; i < 2; i++)
        {
            operations.Add(KeepAliveGetsAsync(sample.HttpEndPoint, $"keep-alive GETs #{i}"));
        }

        for (int i = 0; i < 6; i++)
        {
            int size = rng.Next(64 * 1024, 256 * 1024 + 1);
            operations.Add(RawEchoAsync(sample.EchoEndPoint, $"raw echo #{i} ({size} bytes)", Client.RandomBytes(size, seed * 1000 + 100 + i), seed * 1000 + 200 + i));
        }

        // Each operation bounds itself; this only guards the test against a bug in the workload.
        return await Task.WhenAll(operations).WaitAsync(OperationTimeout * 3);
    }

    /// <summary>GET /plaintext with retries (a reset can hit any single request when resets are injected).</summary>
    public static async Task<bool> ServesPlaintextAsync(SampleProcess sample, int attempts)
    {
        for (int i = 0; i < attempts; i++)
        {
            try
            {
                using var socket = await Client.ConnectAsync(sample.HttpEndPoint);
                await socket.SendAllAsync(RawHttpReader.Get("/plaintext", close: true));
                var response = await new RawHttpReader(socket).ReadResponseAsync();
                if (response.StatusCode == 200 && response.BodyText == "Hello, World!")
                {
                    return true;
                }
            }
            catch (Exception e) when (IsCleanFailure(e))
            {
            }
        }

        return false;
    }

    private static async Task<OperationResult> PostEchoAsync(HttpClient http, string name, byte[] body, bool chunked)
    {
        using var cts = new CancellationTokenSource(OperationTimeout);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/echo") { Content = new ByteArrayContent(body) };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            if (chunked)
            {
                request.Content.Headers.ContentLength = null;
                request.Headers.TransferEncodingChunked = true;
            }

            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseContentRead, cts.Token);
            byte[] echoed = await response.Content.ReadAsByteArrayAsync(cts.Token);
            if (response.StatusCode != HttpStatusCode.OK)
            {
                return new(name, Outcome.Corrupted, $"status {(int)response.StatusCode}");
            }

            return echoed.AsSpan().SequenceEqual(body)
                ? new(name, Outcome.Intact, "")
                : new(name, Outcome.Corrupted, $"{echoed.Length} bytes back (sha256 {Client.Sha256(echoed)[..16]}), sent {body.Length} (sha256 {Client.Sha256(body)[..16]}); first difference at {FirstDifference(body, echoed)}");
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            return new(name, Outcome.Hung, $"no response within {OperationTimeout}");
        }
        catch (Exception e) when (IsCleanFailure(e))
        {
            return new(name, Outcome.FailedCleanly, Describe(e));
        }
    }

    private static async Task<OperationResult> KeepAliveGetsAsync(IPEndPoint endPoint, string name)
    {
        int answered = 0;
        try
        {
            using var socket = await Client.ConnectAsync(endPoint);
            var reader = new RawHttpReader(socket, OperationTimeout);

            // One at a time on one connection, then 16 pipelined in a single send.
            for (int i = 0; i < 30; i++)
            {
                string path = i % 2 == 0 ? "/plaintext" : "/json";
                await socket.SendAllAsync(RawHttpReader.Get(path), OperationTimeout);
                if (Check(await reader.ReadResponseAsync(), path) is { } bad)
                {
                    return new(name, Outcome.Corrupted, $"response {answered}: {bad}");
                }

                answered++;
            }

            var pipelined = new StringBuilder();
            for (int i = 0; i < 16; i++)
            {
                pipelined.Append(RawHttpReader.Get(i % 2 == 0 ? "/json" : "/plaintext"));
            }

            await socket.SendAllAsync(pipelined.ToString(), OperationTimeout);
            for (int i = 0; i < 16; i++)
            {
                string path = i % 2 == 0 ? "/json" : "/plaintext";
                if (Check(await reader.ReadResponseAsync(), path) is { } bad)
                {
                    return new(name, Outcome.Corrupted, $"response {answered}: {bad}");
                }

                answered++;
            }

            return new(name, Outcome.Intact, "");
        }
        catch (OperationCanceledException)
        {
            return new(name, Outcome.Hung, $"no response within {OperationTimeout} after {answered} responses");
        }
        catch (InvalidDataException e)
        {
            return new(name, Outcome.Corrupted, $"after {answered} responses: {e.Message}");
        }
        catch (Exception e) when (IsCleanFailure(e))
        {
            return new(name, Outcome.FailedCleanly, $"after {answered} responses: {Describe(e)}");
        }

        static string? Check(RawHttpResponse response, string path)
        {
            string expected = path == "/json" ? """{"message":"Hello, World!"}""" : "Hello, World!";
            return response.StatusCode == 200 && response.BodyText == expected
                ? null
                : $"{path}: status {response.StatusCode}, body '{response.BodyText}'";
        }
    }

    /// <summary>Sends <paramref name="data"/> in random pieces while reading the echo, half-closes, reads to EOF.</summary>
    private static async Task<OperationResult> RawEchoAsync(IPEndPoint endPoint, string name, byte[] data, int seed)
    {
        var received = new MemoryStream();
        using var cts = new CancellationTokenSource(OperationTimeout);
        Socket? socket = null;
        try
        {
            socket = await Client.ConnectAsync(endPoint);
            var sending = Task.Run(async () =>
            {
                var rng = new Random(seed);
                int offset = 0;
                while (offset < data.Length)
                {
                    int n = Math.Min(rng.Next(1, 16 * 1024), data.Length - offset);
                    offset += await socket.SendAsync(data.AsMemory(offset, n), SocketFlags.None, cts.Token);
                }

                socket.Shutdown(SocketShutdown.Send);
            });

            var buffer = new byte[32 * 1024];
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    break;
                }

                received.Write(buffer, 0, n);
                if (!IsPrefix(data, received))
                {
                    return new(name, Outcome.Corrupted, $"the echo differs from what was sent at or before byte {received.Length}: first difference at {FirstDifference(data, received.ToArray())}");
                }
            }

            await sending.WaitAsync(cts.Token);
            return received.Length == data.Length
                ? new(name, Outcome.Intact, "")
                : new(name, Outcome.FailedCleanly, $"EOF after {received.Length} of {data.Length} bytes (all right so far)");
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            return new(name, Outcome.Hung, $"stuck after {received.Length} of {data.Length} bytes echoed");
        }
        catch (Exception e) when (IsCleanFailure(e))
        {
            return new(name, Outcome.FailedCleanly, $"after {received.Length} of {data.Length} bytes echoed (all right so far): {Describe(e)}");
        }
        finally
        {
            socket?.Dispose();
        }
    }

    private static bool IsPrefix(byte[] data, MemoryStream received)
        => received.Length <= data.Length && data.AsSpan(0, (int)received.Length).SequenceEqual(received.GetBuffer().AsSpan(0, (int)received.Length));

    private static long FirstDifference(byte[] expected, byte[] actual)
    {
        int common = Math.Min(expected.Length, actual.Length);
        int index = expected.AsSpan(0, common).CommonPrefixLength(actual.AsSpan(0, common));
        return index;
    }

    /// <summary>Resets, broken pipes, early EOFs: how a connection the server dropped looks to a client.</summary>
    public static bool IsCleanFailure(Exception e) => e switch
    {
        HttpRequestException or SocketException or EndOfStreamException => true,
        IOException => true,
        AggregateException a => a.InnerExceptions.All(IsCleanFailure),
        _ => false,
    };

    private static string Describe(Exception e)
    {
        var parts = new List<string>();
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            parts.Add($"{x.GetType().Name}: {x.Message}");
        }

        return string.Join(" <- ", parts);
    }
}

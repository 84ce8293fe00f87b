// A console client on the epoll transport's outbound connections, with no Kestrel and no web host: ping-pong against
// an echo server (the WebApp sample's echo port), then round trips per second, latency and CPU per round trip.
// See README.md ("Outbound connections").
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll;
using EchoClient;

ClientSettings settings;
try
{
    settings = ClientSettings.Parse(args);
}
catch (Exception e) when (e is ClientUsageException or FormatException)
{
    Console.Error.WriteLine($"EchoClient: {e.Message}");
    Console.Error.WriteLine(ClientSettings.Usage);
    return 2;
}

if (!EpollTransport.IsSupported)
{
    Console.Error.WriteLine($"EchoClient: the epoll transport cannot run here: {EpollTransport.UnsupportedReason}");
    return 3;
}

// The factory owns its loops: they start with the first connect and stop when it is disposed.
await using var factory = new EpollConnectionFactory(new EpollTransportOptions
{
    ThreadCount = settings.Threads,
    UnsafePreferInlineScheduling = settings.Inline,
    SpinBeforeWait = TimeSpan.FromMicroseconds(settings.Spin),
    ConnectTimeout = TimeSpan.FromSeconds(5),
});

var connections = new ConnectionContext[settings.Connections];
try
{
    for (int i = 0; i < connections.Length; i++)
    {
        connections[i] = await factory.ConnectAsync(settings.Target);
    }
}
catch (Exception e) when (e is SocketException or TimeoutException)
{
    // A refused or unreachable server is a SocketException (SocketErrorCode says which), no answer a TimeoutException.
    Console.Error.WriteLine($"EchoClient: {e.Message}");
    return 4;
}

byte[] message = new byte[settings.Bytes];
new Random(1).NextBytes(message);
var phase = new StrongBox<int>(PingPong.Warming);
var latencies = connections.Select(_ => new List<long>(1 << 16)).ToArray();
Task[] workers = connections.Select((c, i) => PingPong.RunAsync(c, message, phase, latencies[i])).ToArray();

// Warm-up (JIT, tiering) is not measured; neither is start-up. CPU is the whole process's: loops, thread pool, GC.
await Task.WhenAny(Task.WhenAll(workers), Task.Delay(TimeSpan.FromSeconds(settings.Warmup)));
using var process = Process.GetCurrentProcess();
process.Refresh();
TimeSpan cpuBefore = process.TotalProcessorTime;
long started = Stopwatch.GetTimestamp();
Volatile.Write(ref phase.Value, PingPong.Measuring);

await Task.WhenAny(Task.WhenAll(workers), Task.Delay(TimeSpan.FromSeconds(settings.Seconds)));
Volatile.Write(ref phase.Value, PingPong.Stopping);
TimeSpan elapsed = Stopwatch.GetElapsedTime(started);
process.Refresh();
TimeSpan cpu = process.TotalProcessorTime - cpuBefore;

try
{
    await Task.WhenAll(workers);
    await Task.WhenAll(connections.Select(PingPong.CloseAsync));
}
catch (Exception e) when (e is IOException or InvalidDataException or ConnectionResetException or ConnectionAbortedException)
{
    Console.Error.WriteLine($"EchoClient: {e.Message}");
    return 5;
}

long[] all = latencies.SelectMany(l => l).Order().ToArray();
long trips = all.Length;
double Percentile(double p) => all.Length == 0 ? 0 : all[Math.Min(all.Length - 1, (int)(p * all.Length))] * 1e6 / Stopwatch.Frequency;
double rate = trips / elapsed.TotalSeconds;
double cpuPerTrip = trips == 0 ? 0 : cpu.TotalMicroseconds / trips;
var invariant = CultureInfo.InvariantCulture;
Console.WriteLine(string.Create(invariant,
    $"EchoClient: {trips} round trips of {settings.Bytes} bytes on {settings.Connections} connection(s) in {elapsed.TotalSeconds:0.00} s: " +
    $"{rate:0} per second, p50 {Percentile(0.50):0.0} µs, p99 {Percentile(0.99):0.0} µs, client CPU {cpuPerTrip:0.00} µs per round trip"));
Console.WriteLine(string.Create(invariant,
    $"{{\"mode\":\"pingpong\",\"client\":\"epoll-factory\",\"conns\":{settings.Connections},\"msg_bytes\":{settings.Bytes},\"seconds\":{elapsed.TotalSeconds:0.0000}," +
    $"\"ops\":{trips},\"rate\":{rate:0.0},\"p50_us\":{Percentile(0.50):0.0},\"p99_us\":{Percentile(0.99):0.0},\"cpu_seconds\":{cpu.TotalSeconds:0.0000},\"cpu_us_per_op\":{cpuPerTrip:0.000}}}"));
return 0;

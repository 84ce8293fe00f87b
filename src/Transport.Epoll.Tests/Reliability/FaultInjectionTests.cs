using System.Text.RegularExpressions;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>
/// The sample runs in a child process with <c>TRANSPORT_EPOLL_FAULTS</c> set (the seam reads it once per process):
/// EINTR, EAGAIN, short reads, 1-byte and partial writes, EMFILE on accept at 5% of the calls. The CI-sized version of
/// the stress script's 200 seeds; the seed is in every failure message, so a failure can be replayed.
/// </summary>
public sealed partial class FaultInjectionTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Every_byte_arrives_intact_and_in_order_with_syscall_faults_injected(int seed)
    {
        string faults = $"seed={seed};rate=0.05";
        await using var sample = await SampleProcess.StartAsync(faults, output: output);

        var results = await IntegrityWorkload.RunAsync(sample, seed);

        var bad = results.Where(r => r.Outcome != Outcome.Intact).ToList();
        Assert.True(bad.Count == 0, $"TRANSPORT_EPOLL_FAULTS={faults}: {bad.Count} of {results.Count} operations not intact:\n{string.Join('\n', bad)}\n--- sample output ---\n{sample.Tail()}");
        Assert.False(sample.HasExited, $"TRANSPORT_EPOLL_FAULTS={faults}: the sample exited.\n{sample.Tail()}");
        Assert.True(await IntegrityWorkload.ServesPlaintextAsync(sample, attempts: 1), $"TRANSPORT_EPOLL_FAULTS={faults}: the sample stopped serving.\n{sample.Tail()}");
        AssertNoTransportFailureLogged(sample, faults);
    }

    [Fact]
    public async Task With_resets_injected_each_connection_completes_intact_or_fails_cleanly_and_the_server_serves_on()
    {
        // resets: ECONNRESET and EPIPE on reads and writes, ENOBUFS on writes, at 0.2% of the calls: a 512 KiB echo
        // makes a few hundred calls, so some operations fail and most complete.
        const int seed = 5;
        string faults = $"seed={seed};rate=0.05;resets=0.002";
        await using var sample = await SampleProcess.StartAsync(faults, output: output);
        sample.Expect(line => IsKestrelErrorOnEnobufsConnection(sample, line), "an injected ENOBUFS on a send fails the connection; /echo's body read throws it");
        sample.Expect(IsKestrelBodyResetRace, "Kestrel's own race when a connection resets mid-body");

        var results = await IntegrityWorkload.RunAsync(sample, seed);
        foreach (var result in results)
        {
            output.WriteLine(result.ToString());
        }

        var bad = results.Where(r => r.Outcome is Outcome.Hung or Outcome.Corrupted).ToList();
        Assert.True(bad.Count == 0, $"TRANSPORT_EPOLL_FAULTS={faults}: {bad.Count} of {results.Count} operations hung or got wrong bytes:\n{string.Join('\n', bad)}\n--- sample output ---\n{sample.Tail()}");

        // A run where everything failed would prove nothing about integrity.
        int intact = results.Count(r => r.Outcome == Outcome.Intact);
        Assert.True(intact >= results.Count / 3, $"TRANSPORT_EPOLL_FAULTS={faults}: only {intact} of {results.Count} operations completed:\n{string.Join('\n', results)}");

        Assert.False(sample.HasExited, $"TRANSPORT_EPOLL_FAULTS={faults}: the sample exited.\n{sample.Tail()}");
        Assert.True(await IntegrityWorkload.ServesPlaintextAsync(sample, attempts: 5), $"TRANSPORT_EPOLL_FAULTS={faults}: the sample stopped serving.\n{sample.Tail()}");
        AssertNoTransportFailureLogged(sample, faults);
    }

    /// <summary>
    /// Injected faults are ordinary kernel behaviour: the transport may log warnings, never an error or a crash, and
    /// neither may Kestrel or the sample, except for what a test declared.
    /// </summary>
    private static void AssertNoTransportFailureLogged(SampleProcess sample, string faults) =>
        sample.AssertNoUnexpectedFailures($"TRANSPORT_EPOLL_FAULTS={faults}");

    /// <summary>
    /// ENOBUFS on a send is a socket error: the transport closes the connection with a warning (event 202) and completes
    /// its input with the error, so the /echo endpoint's body read throws it and Kestrel logs it as the application's
    /// (event 13; Sockets completes its input with the SocketException the same way), and Kestrel's request-body state
    /// is left mid-read (event 67 when it drains the body, or an ArgumentOutOfRangeException from the body's AdvanceTo).
    /// Explained only on a connection the transport reported the ENOBUFS for.
    /// </summary>
    private static bool IsKestrelErrorOnEnobufsConnection(SampleProcess sample, string line)
    {
        if (!line.StartsWith("fail: Microsoft.AspNetCore.Server.Kestrel[13]", StringComparison.Ordinal)
            && !line.StartsWith("fail: Microsoft.AspNetCore.Server.Kestrel[67]", StringComparison.Ordinal))
        {
            return false;
        }

        var id = ConnectionIdPattern().Match(line);
        return id.Success && sample.Lines.Any(l => l.Contains($"Connection {id.Groups[1].Value}: socket error ENOBUFS", StringComparison.Ordinal));
    }

    /// <summary>
    /// Kestrel's own race when a connection resets in the middle of a request body (the Sockets transport too, about 1
    /// in 500 such resets): the body reader's positions go stale and the endpoint's next AdvanceTo throws.
    /// </summary>
    private static bool IsKestrelBodyResetRace(string line) =>
        line.StartsWith("fail: Microsoft.AspNetCore.Server.Kestrel[13]", StringComparison.Ordinal)
        && line.Contains("System.ArgumentOutOfRangeException", StringComparison.Ordinal)
        && (line.Contains("MessageBody.TrackConsumedAndExaminedBytes", StringComparison.Ordinal) || line.Contains("Http1ContentLengthMessageBody.AdvanceTo", StringComparison.Ordinal));

    [GeneratedRegex("Connection id \"([^\"]+)\"")]
    private static partial Regex ConnectionIdPattern();
}

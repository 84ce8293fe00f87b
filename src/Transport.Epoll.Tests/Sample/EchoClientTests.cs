using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Sample;

/// <summary>The outbound example (samples/EchoClient) as a user runs it: a process of its own against the sample's echo port.</summary>
[Collection(SerialCollection.Name)]
public sealed partial class EchoClientTests(ITestOutputHelper output)
{
    [Fact]
    public async Task EchoClient_ping_pongs_with_the_sample_echo_port_and_reports_its_round_trips()
    {
        await using var sample = await SampleProcess.StartAsync(output: output);
        await using var client = ChildProcess.Start(DotnetCli.StartInfo(
            Path.GetDirectoryName(Repository.EchoClientDll)!,
            [Repository.EchoClientDll, "--Connect", $"127.0.0.1:{sample.EchoPort}", "--Connections", "4", "--Seconds", "1", "--Warmup", "0"]), output, "[client] ");

        int code = await client.WaitForExitAsync(Timeouts.Bulk, "EchoClient");

        Assert.True(code == 0, $"EchoClient exited with {code}:\n{client.Tail()}");
        Match json = client.Lines.Select(l => Ops().Match(l)).Single(m => m.Success);
        Assert.True(long.Parse(json.Groups["ops"].Value, CultureInfo.InvariantCulture) > 0, "No round trip was made.");
        sample.AssertNoUnexpectedFailures();
    }

    [Fact]
    public async Task EchoClient_reports_a_refused_connect_and_exits_with_4()
    {
        using var closedPort = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closedPort.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        await using var client = ChildProcess.Start(DotnetCli.StartInfo(
            Path.GetDirectoryName(Repository.EchoClientDll)!,
            [Repository.EchoClientDll, "--Connect", closedPort.LocalEndPoint!.ToString()!]), output, "[client] ");

        int code = await client.WaitForExitAsync(Timeouts.Bulk, "EchoClient");

        Assert.Equal(4, code);
        Assert.Contains(client.Lines, l => l.Contains("ECONNREFUSED", StringComparison.Ordinal));
    }

    [GeneratedRegex("\"ops\":(?<ops>[0-9]+)")]
    private static partial Regex Ops();
}

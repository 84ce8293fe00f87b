using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Sample;

/// <summary>The published sample as a newcomer meets it: a landing page, HEAD on files, a WebSocket echo, raw ports
/// that stay on loopback when HTTP does, and start-up mistakes reported in one line.</summary>
public sealed class SampleAppTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_sample_names_its_endpoints_answers_HEAD_on_files_and_echoes_WebSocket_messages()
    {
        await using var sample = await SampleProcess.StartAsync(output: output);
        using var client = HttpClients.Create(sample.BaseAddress);

        string landing = await client.GetStringAsync("/").WithTimeout();
        Assert.Contains("epoll transport", landing, StringComparison.Ordinal);
        Assert.Contains("/plaintext", landing, StringComparison.Ordinal);

        using var head = await client.SendAsync(new HttpRequestMessage(HttpMethod.Head, "/files/hello.txt")).WithTimeout();
        Assert.Equal(HttpStatusCode.OK, head.StatusCode);
        Assert.True(head.Content.Headers.ContentLength > 0);
        Assert.Empty(await head.Content.ReadAsByteArrayAsync());

        using var socket = new ClientWebSocket();
        using var cts = Timeouts.Cts();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{sample.HttpPort}/ws"), cts.Token);
        await socket.SendAsync("hello over epoll"u8.ToArray(), WebSocketMessageType.Text, endOfMessage: true, cts.Token);
        var buffer = new byte[256];
        var received = await socket.ReceiveAsync(buffer, cts.Token);
        Assert.Equal("hello over epoll", Encoding.UTF8.GetString(buffer, 0, received.Count));
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
    }

    [Fact]
    public async Task With_loopback_urls_the_raw_echo_port_listens_on_loopback_only()
    {
        await using var sample = await SampleProcess.StartAsync(output: output);

        // /proc/net/tcp lists listening sockets (state 0A) as hex address:port; the echo port's must be 127.0.0.1.
        string port = sample.EchoPort.ToString("X4", System.Globalization.CultureInfo.InvariantCulture);
        var listening = File.ReadLines("/proc/net/tcp").Concat(File.ReadLines("/proc/net/tcp6"))
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length > 3 && f[3] == "0A" && f[1].EndsWith(":" + port, StringComparison.Ordinal))
            .Select(f => f[1])
            .ToList();
        output.WriteLine(string.Join(", ", listening));
        Assert.NotEmpty(listening);
        Assert.All(listening, address => Assert.True(
            address == "0100007F:" + port || address == "00000000000000000000000001000000:" + port,
            $"The echo port listens on {address}, not only on loopback."));

        using var echo = await Client.ConnectAsync(sample.EchoEndPoint);
        await echo.SendAllAsync("ping");
        Assert.Equal("ping", Encoding.ASCII.GetString(await echo.ReceiveExactlyAsync(4)));
    }

    [Theory]
    [InlineData("--Kestrel:Transport:Epoll:ThreadCount", "0", "ThreadCount is 0; it must be between 1 and 256")]
    [InlineData("--Kestrel:Transport:Epoll:AcceptDistribution", "foo", "it must be one of ReusePort, Exclusive")]
    [InlineData("--urls", "http://127.0.0.1:99999", "the port must be 0 to 65535")]
    [InlineData("--ShutdownTimeout", "soon", "--ShutdownTimeout 'soon' is not a number of seconds from 0 to 3600")]
    [InlineData("--DrainDelay", "-1", "--DrainDelay '-1' is not a number of seconds from 0 to 3600")]
    public async Task A_start_up_mistake_is_one_line_and_a_clear_exit_code_not_a_crash(string option, string value, string message)
    {
        var (exitCode, stdout, stderr) = await RunSampleToExitAsync(option, value);
        output.WriteLine($"exit {exitCode}\nstdout: {stdout}\nstderr: {stderr}");
        Assert.Equal(2, exitCode);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(message, line, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", stdout + stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_taken_port_is_one_line_on_stderr_and_exit_code_4()
    {
        using var taken = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        taken.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        taken.Listen();
        int port = ((IPEndPoint)taken.LocalEndPoint!).Port;

        var (exitCode, _, stderr) = await RunSampleToExitAsync("--urls", $"http://127.0.0.1:{port}");
        Assert.Equal(4, exitCode);
        Assert.Contains("address already in use", Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
    }

    private static async Task<(int ExitCode, string Stdout, string Stderr)> RunSampleToExitAsync(params string[] args)
    {
        // Not a ChildProcess: the test tells stdout from stderr, which that interleaves.
        string dll = Repository.SampleDll;
        var psi = DotnetCli.StartInfo(Path.GetDirectoryName(dll)!, [dll, "--EchoPort", "-1", "--ChatPort", "-1", .. args]);
        using var process = Process.Start(psi)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var cts = Timeouts.Cts(Timeouts.Bulk);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        return (process.ExitCode, await stdout, await stderr);
    }
}

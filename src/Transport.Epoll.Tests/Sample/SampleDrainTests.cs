using System.Net;
using System.Net.Http;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Sample;

/// <summary>The sample's readiness endpoint and drain window (issue 14 item 3), stopped as systemd or docker stop it.</summary>
public sealed class SampleDrainTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Ready_answers_503_as_soon_as_the_sample_stops_and_it_keeps_serving_with_Connection_close_for_the_drain_delay()
    {
        await using var sample = await SampleProcess.StartAsync(output: output, extraArgs: ["--DrainDelay", "3", "--ShutdownTimeout", "10"]);
        using var client = HttpClients.Create(sample.BaseAddress);
        using (var ready = await client.GetAsync("/ready").WithTimeout())
        {
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        }

        Assert.Equal(0, Native.Kill(sample.Pid, Native.SIGTERM));

        // Within the drain delay: not ready, but still serving, new connections included.
        HttpStatusCode status = HttpStatusCode.OK;
        Assert.True(await Poll.UntilAsync(async () =>
        {
            using var fresh = HttpClients.Create(sample.BaseAddress);
            using var response = await fresh.GetAsync("/ready");
            status = response.StatusCode;
            return status == HttpStatusCode.ServiceUnavailable;
        }), $"/ready still answers {status} after SIGTERM.");
        using (var fresh = HttpClients.Create(sample.BaseAddress))
        {
            // Served, and told that this keep-alive connection ends with this response (Draining.cs).
            using var response = await fresh.GetAsync("/plaintext").WithTimeout();
            Assert.Equal("Hello, World!", await response.Content.ReadAsStringAsync());
            Assert.True(response.Headers.ConnectionClose, "A response while draining did not carry Connection: close.");
        }

        // Then it stops by itself, cleanly.
        Assert.Equal(0, await sample.WaitForExitAsync(Timeouts.Bulk));
        sample.AssertNoUnexpectedFailures();
    }
}

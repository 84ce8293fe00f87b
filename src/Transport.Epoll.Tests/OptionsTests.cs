using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

public sealed class OptionsTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(nameof(EpollTransportOptions.ThreadCount))]
    [InlineData(nameof(EpollTransportOptions.MaxReadBufferSize))]
    [InlineData(nameof(EpollTransportOptions.MaxWriteBufferSize))]
    [InlineData(nameof(EpollTransportOptions.Backlog))]
    [InlineData(nameof(EpollTransportOptions.MaxPendingAccepts))]
    [InlineData(nameof(EpollTransportOptions.AcceptDistribution))]
    [InlineData(nameof(EpollTransportOptions.ConnectTimeout))]
    public async Task A_bogus_option_fails_host_start_with_a_message_naming_it(string option)
    {
        Action<EpollTransportOptions> bogus = option switch
        {
            nameof(EpollTransportOptions.ThreadCount) => o => o.ThreadCount = 0,
            nameof(EpollTransportOptions.MaxReadBufferSize) => o => o.MaxReadBufferSize = -1,
            nameof(EpollTransportOptions.MaxWriteBufferSize) => o => o.MaxWriteBufferSize = -1,
            nameof(EpollTransportOptions.Backlog) => o => o.Backlog = 0,
            nameof(EpollTransportOptions.MaxPendingAccepts) => o => o.MaxPendingAccepts = 0,
            nameof(EpollTransportOptions.ConnectTimeout) => o => o.ConnectTimeout = TimeSpan.Zero,
            _ => o => o.AcceptDistribution = (EpollAcceptDistribution)42,
        };

        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Epoll = bogus,
        }));

        string messages = string.Join(" <- ", Chain(ex).Select(e => $"{e.GetType().Name}: {e.Message}"));
        output.WriteLine(messages);
        Assert.Contains(Chain(ex), e => e is OptionsValidationException);
        Assert.Contains(option, messages, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Valid_non_default_options_start_and_serve()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            Epoll = o =>
            {
                o.ThreadCount = 1;
                o.MaxReadBufferSize = null;
                o.MaxWriteBufferSize = 0;
                o.NoDelay = false;
                o.Backlog = 1;
                o.MaxPendingAccepts = 1;
                o.AcceptDistribution = EpollAcceptDistribution.Exclusive;
                o.UnsafePreferInlineScheduling = true;
            },
        });
        using var client = HttpClients.Create(server.BaseAddress);

        var responses = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => client.GetStringAsync($"/item/{i}")));

        Assert.Equal(Enumerable.Range(0, 20).Select(i => $"item {i}"), responses);
    }

    [Fact]
    public async Task Options_bind_from_the_Kestrel_Transport_Epoll_configuration_section()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:ThreadCount"] = "3",
                ["Kestrel:Transport:Epoll:MaxReadBufferSize"] = "123456",
                ["Kestrel:Transport:Epoll:Backlog"] = "77",
                ["Kestrel:Transport:Epoll:AcceptDistribution"] = "Exclusive",
                ["Kestrel:Transport:Epoll:AllowHalfOpen"] = "true",
            }),
        });

        var options = server.App.Services.GetRequiredService<IOptions<EpollTransportOptions>>().Value;
        Assert.Equal(3, options.ThreadCount);
        Assert.Equal(123456, options.MaxReadBufferSize);
        Assert.Equal(77, options.Backlog);
        Assert.Equal(EpollAcceptDistribution.Exclusive, options.AcceptDistribution);
        Assert.True(options.AllowHalfOpen);
        Assert.Equal(64 * 1024, options.MaxWriteBufferSize);
        using var client = HttpClients.Create(server.BaseAddress);
        Assert.Equal(TestApp.Plaintext, await client.GetStringAsync("/plaintext"));
    }

    [Theory]
    [InlineData("AcceptDistribution", "foo", "one of ReusePort, Exclusive")]
    [InlineData("ThreadCount", "many", "a whole number")]
    [InlineData("IdleTimeout", "soon", "a duration such as 00:00:30")]
    [InlineData("EnableSendFile", "yes", "true or false")]
    public async Task A_configuration_value_of_the_wrong_type_fails_start_up_naming_the_key_and_what_it_accepts(string key, string value, string expected)
    {
        var error = await Assert.ThrowsAnyAsync<OptionsValidationException>(() => TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:" + key] = value,
            }),
        }));

        Assert.Equal($"Kestrel:Transport:Epoll:{key} is '{value}'; it must be {expected}", error.Message.Split(" (hh")[0].TrimEnd('.'));
    }

    [Fact]
    public async Task Options_set_in_code_win_over_configuration()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            Epoll = o => o.Backlog = 99,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:Backlog"] = "77",
                ["Kestrel:Transport:Epoll:MaxPendingAccepts"] = "5",
            }),
        });

        var options = server.App.Services.GetRequiredService<IOptions<EpollTransportOptions>>().Value;
        Assert.Equal(99, options.Backlog);
        Assert.Equal(5, options.MaxPendingAccepts);
    }

    [Theory]
    [InlineData("before")]
    [InlineData("after")]
    public async Task UseEpollTransport_works_called_before_or_after_UseKestrel_on_a_WebApplicationBuilder(string order)
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            RegisterTransport = false,
            ConfigureApp = TestApp.Map,
            Output = output,
            ConfigureBuilder = builder =>
            {
                if (order == "before")
                {
                    builder.WebHost.UseEpollTransport(o => o.ThreadCount = 1);
                    builder.WebHost.UseKestrel();
                }
                else
                {
                    builder.WebHost.UseKestrel();
                    builder.WebHost.UseEpollTransport(o => o.ThreadCount = 1);
                }
            },
        });

        // The test server checks every connection for IEpollConnectionFeature; the request sees it too.
        using var client = HttpClients.Create(server.BaseAddress);
        string conn = await client.GetStringAsync("/conn");
        Assert.DoesNotContain("epoll=none", conn);
        Assert.Equal(1, server.ConnectionCount);
    }

    [Theory]
    [InlineData("before")]
    [InlineData("after")]
    public async Task UseEpollTransport_works_called_before_or_after_UseKestrel_on_a_generic_host(string order)
    {
        var logs = new LogSink(output);
        using var host = new HostBuilder()
            .ConfigureLogging(logging => logging.ClearProviders().AddProvider(logs))
            .ConfigureWebHost(web =>
            {
                if (order == "before")
                {
                    web.UseEpollTransport(o => o.ThreadCount = 1).UseKestrel();
                }
                else
                {
                    web.UseKestrel().UseEpollTransport(o => o.ThreadCount = 1);
                }

                web.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
                web.Configure(app => app.Run(ctx => ctx.Response.WriteAsync(
                    ctx.Features.Get<IEpollConnectionFeature>() is { } f ? $"epoll {f.Id}" : "not epoll")));
            })
            .Build();
        using var cts = Timeouts.Cts();
        await host.StartAsync(cts.Token);
        try
        {
            string address = host.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
                .Features.Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()!.Addresses.Single();
            using var client = HttpClients.Create(new Uri(address));
            Assert.StartsWith("epoll ", await client.GetStringAsync("/"));
        }
        finally
        {
            using var stop = Timeouts.Cts();
            await host.StopAsync(stop.Token);
        }

        logs.AssertNoUnexpectedFailures();
    }

    [Fact]
    public async Task AddEpollTransport_on_the_services_puts_Kestrel_on_epoll()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            RegisterTransport = false,
            ConfigureApp = TestApp.Map,
            Output = output,
            ConfigureBuilder = builder => builder.Services.AddEpollTransport(o => o.ThreadCount = 1),
        });
        using var client = HttpClients.Create(server.BaseAddress);
        Assert.DoesNotContain("epoll=none", await client.GetStringAsync("/conn"));
    }

    [Fact]
    public void The_transport_reports_itself_supported_on_Linux()
    {
        Assert.True(EpollTransport.IsSupported, EpollTransport.UnsupportedReason);
        Assert.Null(EpollTransport.UnsupportedReason);
    }

    private static IEnumerable<Exception> Chain(Exception ex)
    {
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            yield return e;
            if (e is AggregateException aggregate)
            {
                foreach (var inner in aggregate.InnerExceptions.SelectMany(Chain))
                {
                    yield return inner;
                }
            }
        }
    }
}

/// <summary>Options that show in the number of epoll- threads: in the serial collection, where no other host runs.</summary>
[Collection(SerialCollection.Name)]
public sealed class ThreadCountTests(ITestOutputHelper output)
{
    [Fact]
    public async Task ThreadCount_from_configuration_starts_that_many_named_loop_threads()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:ThreadCount"] = "3",
            }),
        });

        Assert.Equal(["epoll-0", "epoll-1", "epoll-2"], ProcessInfo.EpollThreadNames());
    }

    [Fact]
    public async Task ThreadCount_set_in_code_wins_over_configuration()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            Epoll = o => o.ThreadCount = 2,
            ConfigureBuilder = builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Epoll:ThreadCount"] = "3",
            }),
        });

        Assert.Equal(["epoll-0", "epoll-1"], ProcessInfo.EpollThreadNames());
    }

    [Fact]
    public async Task The_default_ThreadCount_is_one_loop_per_core()
    {
        await using var server = await TestServer.StartHttpAsync(Transports.Epoll, TestApp.Map, output: output);

        Assert.Equal(Enumerable.Range(0, Environment.ProcessorCount).Select(i => $"epoll-{i}").Order(StringComparer.Ordinal), ProcessInfo.EpollThreadNames());
    }

    [Fact]
    public async Task Calling_UseEpollTransport_twice_still_runs_one_set_of_loops()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConfigureApp = TestApp.Map,
            Output = output,
            Epoll = o => o.ThreadCount = 2,
            ConfigureBuilder = builder => builder.WebHost.UseEpollTransport(o => o.ThreadCount = 2),
        });
        using var client = HttpClients.Create(server.BaseAddress);
        Assert.Equal(TestApp.Plaintext, await client.GetStringAsync("/plaintext"));

        Assert.Equal(["epoll-0", "epoll-1"], ProcessInfo.EpollThreadNames());
    }

    [Fact]
    public async Task Two_endpoints_share_one_set_of_loops()
    {
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.IPv6Loopback, 0)],
            ConfigureApp = TestApp.Map,
            Output = output,
            Epoll = o => o.ThreadCount = 2,
        });

        Assert.Equal(["epoll-0", "epoll-1"], ProcessInfo.EpollThreadNames());
        foreach (var endPoint in server.EndPoints.Cast<IPEndPoint>())
        {
            using var socket = await Client.ConnectAsync(endPoint);
            await socket.SendAllAsync(RawHttpReader.Get("/plaintext"));
            Assert.Equal(TestApp.Plaintext, (await new RawHttpReader(socket).ReadResponseAsync()).BodyText);
        }
    }
}

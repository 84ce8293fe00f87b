using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Lifetimes;

/// <summary>A logging provider that throws must cost at most the log line, never the loop or the process.</summary>
public sealed class ThrowingLoggerTests(ITestOutputHelper output)
{
    private sealed class ThrowingProvider : ILoggerProvider
    {
        public int Calls;

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

        public void Dispose()
        {
        }

        private sealed class Logger(ThrowingProvider provider, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => category.StartsWith(EpollLog.Category, StringComparison.Ordinal);

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                // Only on the loops' threads: the claim is about them (start-up logs on the host's thread).
                if (Thread.CurrentThread.Name?.StartsWith("epoll-", StringComparison.Ordinal) == true)
                {
                    Interlocked.Increment(ref provider.Calls);
                    throw new InvalidOperationException($"The logging sink is down ({category} event {eventId.Id}).");
                }
            }
        }
    }

    [Fact]
    public async Task A_logging_provider_that_throws_on_a_loop_thread_costs_the_log_line_not_the_loop()
    {
        var throwing = new ThrowingProvider();
        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            ConnectionHandler = Handlers.EchoUntilResetAsync,
            Epoll = o => o.ThreadCount = 1,
            Output = output,
            ConfigureBuilder = builder =>
            {
                builder.Logging.AddProvider(throwing);
                builder.Logging.AddFilter<ThrowingProvider>(EpollLog.Category, LogLevel.Debug);
            },
        });

        // Connections that close (Debug "closed" on the loop) and reset (Debug "reset by peer").
        for (int i = 0; i < 20; i++)
        {
            using var socket = await Client.ConnectAsync(server.EndPoint);
            await socket.SendAllAsync("ping");
            Assert.Equal("ping", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(4)));
            if (i % 2 == 0)
            {
                socket.Shutdown(SocketShutdown.Send);
                Assert.Empty(await socket.ReceiveToEndAsync());
            }
            else
            {
                socket.Reset();
            }
        }

        output.WriteLine($"the throwing provider was called {throwing.Calls} times");
        Assert.True(throwing.Calls > 0, "The transport logged nothing the throwing provider saw: the test proved nothing.");

        // The loop still serves.
        using var last = await Client.ConnectAsync(server.EndPoint);
        await last.SendAllAsync("still here");
        Assert.Equal("still here", Encoding.ASCII.GetString(await last.ReceiveExactlyAsync(10)));
    }
}

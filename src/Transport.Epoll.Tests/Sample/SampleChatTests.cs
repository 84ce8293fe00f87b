using System.Net;
using System.Net.Sockets;
using System.Text;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Sample;

/// <summary>
/// The sample's chat port from outside (samples/WebApp, ChatConnectionHandler), as a client sees it: the id line first,
/// say to every other connection, to one connection by id with ok or gone, kick by id, who; and no line ever reaches a
/// connection it was not addressed to (every client's whole stream is checked against what was sent to it).
/// </summary>
public sealed class SampleChatTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("sockets")]
    public async Task The_chat_contract_holds_from_outside(string transport)
    {
        await using var sample = await SampleProcess.StartAsync(output: output, transport: transport);
        Assert.True(sample.ChatPort > 0, "the start-up line names the chat port");

        await using var a = await ChatClient.ConnectAsync(sample.ChatEndPoint);
        await using var b = await ChatClient.ConnectAsync(sample.ChatEndPoint);
        await using var c = await ChatClient.ConnectAsync(sample.ChatEndPoint);
        Assert.Equal(3, new[] { a.Id, b.Id, c.Id }.Distinct().Count());

        // who: every live connection of the port.
        await a.SendAsync("who");
        string[] who = (await a.ReadLineAsync()).Split(' ');
        Assert.Equal("ids", who[0]);
        Assert.Equal(new[] { a.Id, b.Id, c.Id }.Order(), who[1..].Order());

        // say: every other connection, not the sender.
        await a.SendAsync("say hello all");
        Assert.Equal($"{a.Id}: hello all", await b.ReadLineAsync());
        Assert.Equal($"{a.Id}: hello all", await c.ReadLineAsync());

        // to: that connection only; the sender gets ok.
        await b.SendAsync($"to {c.Id} psst");
        Assert.Equal("ok", await b.ReadLineAsync());
        Assert.Equal($"{b.Id}: psst", await c.ReadLineAsync());

        // A connection that left is gone (its id is never handed to anyone else).
        string cId = c.Id;
        await c.DisposeAsync();
        for (int attempt = 0; ; attempt++)
        {
            await a.SendAsync($"to {cId} are you there");
            string answer = await a.ReadLineAsync();
            if (answer == "gone")
            {
                break;
            }

            // Until the server has seen c's FIN, c is still there (and the line went to c, not to anyone else).
            Assert.Equal("ok", answer);
            Assert.True(attempt < 200, "c stayed connected");
        }

        await a.SendAsync("to ffffffffffffff nobody");
        Assert.Equal("gone", await a.ReadLineAsync());

        // kick: the kicked connection gets what was written to it, then the end of the stream.
        await a.SendAsync($"to {b.Id} bye");
        Assert.Equal("ok", await a.ReadLineAsync());
        await a.SendAsync($"kick {b.Id}");
        Assert.Equal("ok", await a.ReadLineAsync());
        Assert.Equal($"{a.Id}: bye", await b.ReadLineAsync());
        Assert.Null(await b.ReadLineOrEndAsync());
        await a.SendAsync($"kick {b.Id}");
        Assert.Equal("gone", await a.ReadLineAsync());

        await a.SendAsync("who");
        Assert.Equal($"ids {a.Id}", await a.ReadLineAsync());

        // Nothing else reached anyone: a's stream ends with its own answers, and a new line is the next thing it reads.
        await a.SendAsync("nonsense");
        Assert.Equal("error unknown command", await a.ReadLineAsync());
        Assert.Empty(a.Unread);
        sample.AssertNoUnexpectedFailures();
    }

    /// <summary>A line client of the chat port: reads its id line on connect; every read is bounded by a timeout.</summary>
    private sealed class ChatClient : IAsyncDisposable
    {
        private readonly Socket _socket;
        private readonly List<byte> _pending = [];
        private readonly byte[] _buffer = new byte[4096];
        private bool _disposed;

        private ChatClient(Socket socket)
        {
            _socket = socket;
        }

        public string Id { get; private set; } = "";

        /// <summary>Bytes received and not read as a line yet.</summary>
        public IReadOnlyList<byte> Unread => _pending;

        public static async Task<ChatClient> ConnectAsync(IPEndPoint endPoint)
        {
            var client = new ChatClient(await Client.ConnectAsync(endPoint));
            string first = await client.ReadLineAsync();
            Assert.StartsWith("id ", first);
            client.Id = first[3..];
            return client;
        }

        public Task SendAsync(string line) => _socket.SendAllAsync(Encoding.UTF8.GetBytes(line + "\n"));

        public async Task<string> ReadLineAsync()
            => await ReadLineOrEndAsync() ?? throw new InvalidOperationException($"connection {Id}: the server closed the connection");

        /// <summary>The next line, or null at the end of the stream.</summary>
        public async Task<string?> ReadLineOrEndAsync()
        {
            while (true)
            {
                int newline = _pending.IndexOf((byte)'\n');
                if (newline >= 0)
                {
                    string line = Encoding.UTF8.GetString(_pending.GetRange(0, newline).ToArray());
                    _pending.RemoveRange(0, newline + 1);
                    return line;
                }

                int read = await _socket.ReceiveOnceAsync(_buffer);
                if (read == 0)
                {
                    Assert.Empty(_pending);
                    return null;
                }

                _pending.AddRange(_buffer.AsSpan(0, read).ToArray());
            }
        }

        public ValueTask DisposeAsync()
        {
            if (!_disposed)
            {
                _disposed = true;
                _socket.Dispose();
            }

            return ValueTask.CompletedTask;
        }
    }
}

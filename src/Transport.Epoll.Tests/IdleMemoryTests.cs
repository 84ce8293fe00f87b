using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;

namespace Transport.Epoll.Tests;

/// <summary>An idle connection holds no pool memory: its pipes have blocks only for bytes not consumed yet.</summary>
public sealed class IdleMemoryTests
{
    [Theory]
    [InlineData(100)]
    [InlineData(4096)] // a whole pool block: the read after it finds nothing (EAGAIN)
    [InlineData(16 * 1024)] // a whole receive buffer, likewise
    [InlineData(3 * 16 * 1024)]
    public async Task A_connection_that_consumed_everything_holds_no_pool_block_while_it_waits_for_more(int size)
    {
        var pools = new CountingPoolFactory();
        var factory = new EpollTransportFactory(Options.Create(new EpollTransportOptions { ThreadCount = 1 }), NullLoggerFactory.Instance, pools);
        try
        {
            IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
            using var client = await Client.ConnectAsync(listener.EndPoint);
            await using ConnectionContext connection = (await listener.AcceptAsync().WithTimeout())!;
            PipeReader input = connection.Transport.Input;

            await client.SendAllAsync(Client.RandomBytes(size, seed: size));
            long received = 0;
            while (received < size)
            {
                ReadResult read = await input.ReadAsync().AsTask().WithTimeout();
                received += read.Buffer.Length;
                input.AdvanceTo(read.Buffer.End);
            }

            Assert.Equal(size, received);

            // The application waits for more, as an idle HTTP/1.1 keep-alive connection does.
            ValueTask<ReadResult> pending = input.ReadAsync();
            Assert.False(pending.IsCompleted);
            Assert.True(
                await Poll.UntilAsync(() => pools.Outstanding == 0, TimeSpan.FromSeconds(2)),
                $"{pools.Outstanding} pool block(s) still rented by an idle connection after {size} bytes were consumed");

            // And it still reads what comes next.
            await client.SendAllAsync("more");
            ReadResult more = await pending.AsTask().WithTimeout();
            Assert.Equal(4, more.Buffer.Length);
            input.AdvanceTo(more.Buffer.End);

            await listener.UnbindAsync();
            await listener.DisposeAsync();
        }
        finally
        {
            await factory.DisposeAsync();
        }
    }

    /// <summary>Pools that count the blocks rented and not yet returned.</summary>
    private sealed class CountingPoolFactory : IMemoryPoolFactory<byte>
    {
        private int _outstanding;

        public int Outstanding => Volatile.Read(ref _outstanding);

        public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new CountingPool(this);

        private sealed class CountingPool(CountingPoolFactory owner) : MemoryPool<byte>
        {
            public override int MaxBufferSize => 4096;

            public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
            {
                Interlocked.Increment(ref owner._outstanding);
                return new Block(owner, Shared.Rent(4096));
            }

            protected override void Dispose(bool disposing)
            {
            }
        }

        private sealed class Block(CountingPoolFactory owner, IMemoryOwner<byte> inner) : IMemoryOwner<byte>
        {
            private int _disposed;

            public Memory<byte> Memory => inner.Memory[..4096];

            public void Dispose()
            {
                if (Interlocked.Exchange(ref _disposed, 1) == 0)
                {
                    Interlocked.Decrement(ref owner._outstanding);
                    inner.Dispose();
                }
            }
        }
    }
}

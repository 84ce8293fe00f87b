using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Transport.Epoll.Internal;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Lifetimes;

/// <summary>The ends of a loop's life: its eventfd, work that arrives after it stopped, its memory pools.</summary>
[Collection(SerialCollection.Name)]
public sealed class LoopLifetimeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_waker_held_between_winning_the_wake_up_and_its_write_never_writes_into_a_reused_fd_number()
    {
        using var loop = NewLoop();
        loop.Start();

        // Hold one thread inside Wake, just before its eventfd write: where a preemption could leave it.
        var holdingThread = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var release = new ManualResetEventSlim();
        int wakerThreadId = 0;
        FaultInjection.BeforeEventFdWrite = fd =>
        {
            if (Environment.CurrentManagedThreadId == Volatile.Read(ref wakerThreadId))
            {
                holdingThread.TrySetResult(fd);
                release.Wait(Timeouts.Default);
            }
        };

        int eventFd;
        string directory = Directory.CreateTempSubdirectory("epoll-eventfd-").FullName;
        var files = new List<Microsoft.Win32.SafeHandles.SafeFileHandle>();
        int ourEventFd = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        try
        {
            var waker = new Thread(() =>
            {
                Volatile.Write(ref wakerThreadId, Environment.CurrentManagedThreadId);

                // The loop sleeps once it has nothing to do; a Schedule then has to wake it.
                while (!holdingThread.Task.IsCompleted)
                {
                    loop.Schedule(static _ => { }, null);
                    Thread.Sleep(1);
                }
            }) { IsBackground = true };
            waker.Start();
            eventFd = await holdingThread.Task.WithTimeout();

            // Stop the loop and wake it through an fd of our own (the held waker's write has not happened).
            Task stopped = loop.StopAsync();
            Assert.Equal(Error.Success, loop.Register(ourEventFd, Libc.EPOLLIN, ulong.MaxValue));
            Assert.Equal(0, Libc.SignalEventFd(ourEventFd));

            // A loop that closes its eventfd now lets the kernel give that number to the next open; take it.
            bool closedUnderTheWaker = await Task.WhenAny(stopped, Task.Delay(TimeSpan.FromMilliseconds(500))) == stopped;
            if (closedUnderTheWaker)
            {
                TakeFdNumber(eventFd, directory, files);
            }

            release.Set();
            waker.Join(Timeouts.Default);
            await stopped.WithTimeout();
            output.WriteLine($"eventfd {eventFd}; loop stopped before the waker wrote: {closedUnderTheWaker}; files opened: {files.Count}");

            // Whatever took the number after the loop closed it got nothing from the waker.
            TakeFdNumber(eventFd, directory, files);
            foreach (var file in files)
            {
                Assert.Equal(0, RandomAccess.GetLength(file));
            }

            Assert.False(closedUnderTheWaker, "The loop closed its eventfd while a waker was still to write to it.");
        }
        finally
        {
            FaultInjection.BeforeEventFdWrite = null;
            release.Set();
            _ = Libc.close(ourEventFd);
            files.ForEach(f => f.Dispose());
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Work_scheduled_after_the_loop_stopped_runs_instead_of_being_dropped()
    {
        using var loop = NewLoop();
        loop.Start();
        await loop.StopAsync().WithTimeout();

        var ran = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Schedule(_ => ran.TrySetResult(loop.IsCurrentThread), null);

        // It runs as the loop would run it: as the loop's work, one at a time.
        Assert.True(await ran.Task.WithTimeout());
    }

    [Fact]
    public async Task The_memory_pools_of_stopped_loops_are_disposed_also_when_the_loops_restart()
    {
        var pools = new TrackingPoolFactory();
        var options = Options.Create(new EpollTransportOptions { ThreadCount = 2 });
        var factory = new EpollTransportFactory(options, NullLoggerFactory.Instance, pools);
        try
        {
            for (int round = 0; round < 2; round++)
            {
                IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
                Assert.Equal(2 * (round + 1), pools.Created.Count);

                // A connection rents from its loop's pool.
                using (var client = await Client.ConnectAsync(listener.EndPoint))
                {
                    ConnectionContext connection = (await listener.AcceptAsync().WithTimeout())!;
                    await client.SendAllAsync("ping");
                    ReadResult read = await connection.Transport.Input.ReadAsync().AsTask().WithTimeout();
                    Assert.Equal(4, read.Buffer.Length);
                    connection.Transport.Input.AdvanceTo(read.Buffer.End);
                    await connection.DisposeAsync();
                }

                await listener.UnbindAsync();
                await listener.DisposeAsync();

                // The last listener gone, the loops stopped: every pool they had is disposed.
                Assert.True(await Poll.UntilAsync(() => pools.Created.All(p => p.Disposed)), $"{pools.Created.Count(p => !p.Disposed)} of {pools.Created.Count} pools not disposed after round {round}.");
            }
        }
        finally
        {
            await factory.DisposeAsync();
        }
    }

    private static EpollLoop NewLoop()
    {
        var context = new Internal.TransportContext(new EpollTransportOptions(), NullLogger.Instance, new EpollMetrics(), null);
        return new EpollLoop(0, new ConnectionTable(), context);
    }

    /// <summary>Opens files until one gets <paramref name="fd"/> (the kernel hands out the lowest free number).</summary>
    private static void TakeFdNumber(int fd, string directory, List<Microsoft.Win32.SafeHandles.SafeFileHandle> files)
    {
        for (int i = 0; i < 64; i++)
        {
            var file = File.OpenHandle(Path.Combine(directory, $"f{files.Count}"), FileMode.Create, FileAccess.ReadWrite);
            files.Add(file);
            if ((int)file.DangerousGetHandle() >= fd)
            {
                return;
            }
        }
    }

    private sealed class TrackingPoolFactory : IMemoryPoolFactory<byte>
    {
        public List<TrackingPool> Created { get; } = [];

        public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
        {
            var pool = new TrackingPool();
            lock (Created)
            {
                Created.Add(pool);
            }

            return pool;
        }
    }

    private sealed class TrackingPool : MemoryPool<byte>
    {
        public bool Disposed { get; private set; }

        public override int MaxBufferSize => Shared.MaxBufferSize;

        public override IMemoryOwner<byte> Rent(int minBufferSize = -1) => Shared.Rent(minBufferSize);

        protected override void Dispose(bool disposing) => Disposed = true;
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// One event loop: a dedicated thread named <c>epoll-N</c>, its own epoll instance, and an eventfd to wake it. It is
/// also a <see cref="PipeScheduler"/>: work scheduled on it runs on its thread, after the I/O events of the current
/// turn, so every connection's reads, sends and closes happen on the one thread that owns the connection.
/// </summary>
/// <remarks>
/// A turn is: epoll_wait, dispatch every event (reads run the application inline when it asks for that), run the
/// scheduled work (this is where sends happen, so all the responses produced in one turn leave in one writev per
/// connection), then the connections that still had input after their read budget. The loop only blocks in
/// epoll_wait when nothing is queued.
/// </remarks>
internal sealed unsafe partial class EpollLoop : PipeScheduler, IDisposable
{
    /// <summary>epoll_event.data of the loop's own eventfd. Table ids are never 0 (generations start at 1).</summary>
    private const ulong WakeUpId = 0;

    /// <summary>Events taken per epoll_wait. Large enough that a loop with thousands of busy connections needs few
    /// syscalls per turn; 512 × 12 bytes stays in one or two pages.</summary>
    private const int MaxEventsPerWait = 512;

    /// <summary>Bytes one read takes from a socket (see EpollConnection.Receive.cs): a quarter of a loopback segment
    /// of 64 KiB, four pool blocks.</summary>
    public const int ReceiveBufferSize = 16 * 1024;

    [ThreadStatic]
    private static EpollLoop? t_current;

    private readonly ConcurrentQueue<Work> _work = new();
    private readonly Queue<EpollConnection> _readAgain = new();
    private readonly Thread _thread;
    private readonly ILogger _logger;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _lateWorkLock = new();
    private int _epollFd;
    private readonly int _eventFd;
    private int _wakeState;
    private int _wakeWritesInFlight;
    private int _terminated;
    private long _turnStartedAt;
    private long _turnNumber;
    private object? _serving;
    private volatile bool _stopRequested;

    public EpollLoop(int index, ConnectionTable table, TransportContext context)
    {
        Index = index;
        Table = table;
        Context = context;
        _logger = context.Logger;
        MemoryPool = context.CreateMemoryPool();
        Counters = context.Metrics.AddLoop();
        FlusherCounters = context.Metrics.AddLoop();

        // Input pipes: the loop writes, the application reads. The writer's continuation (resume reading after
        // backpressure) runs on the loop; the reader's on the thread pool or, with inline scheduling, on the loop.
        // Nothing in them is the connection's own, so the loop's connections share one instance.
        long maxRead = context.MaxReadBufferSize;
        InputPipeOptions = new PipeOptions(
            MemoryPool,
            readerScheduler: context.ApplicationScheduler,
            writerScheduler: this,
            pauseWriterThreshold: maxRead,
            resumeWriterThreshold: maxRead / 2,
            useSynchronizationContext: false);
        _idleTimeoutMs = (long)(context.Options.IdleTimeout?.TotalMilliseconds ?? 0);
        _idleScanIntervalMs = Math.Clamp(_idleTimeoutMs / 8, 1, 1000);
        _spinTicks = (long)(context.Options.SpinBeforeWait.TotalSeconds * Stopwatch.Frequency);

        _epollFd = Libc.epoll_create1(Libc.EPOLL_CLOEXEC);
        if (_epollFd < 0)
        {
            throw new IOException("epoll_create1 failed: " + Errno.Describe(Errno.Last));
        }

        _eventFd = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        if (_eventFd < 0)
        {
            Error error = Errno.Last;
            _ = Libc.close(_epollFd);
            throw new IOException("eventfd failed: " + Errno.Describe(error));
        }

        // Edge-triggered: each write to the eventfd raises a new edge, so the loop never has to read it back
        // (one syscall saved per wake-up). The counter could only overflow after 2^64-2 writes without a read;
        // Wake handles the EAGAIN that would follow.
        if (Libc.EpollControl(_epollFd, Libc.EPOLL_CTL_ADD, _eventFd, Libc.EPOLLIN | Libc.EPOLLET, WakeUpId) != 0)
        {
            Error error = Errno.Last;
            _ = Libc.close(_eventFd);
            _ = Libc.close(_epollFd);
            throw new IOException("epoll_ctl(eventfd) failed: " + Errno.Describe(error));
        }

        _thread = new Thread(Run, maxStackSize: 256 * 1024)
        {
            Name = "epoll-" + index.ToString(System.Globalization.CultureInfo.InvariantCulture),
            IsBackground = true,
        };
    }

    public int Index { get; }

    public ConnectionTable Table { get; }

    public TransportContext Context { get; }

    /// <summary>This loop's pinned memory pool: pipes of its connections rent from it.</summary>
    public System.Buffers.MemoryPool<byte> MemoryPool { get; }

    /// <summary>The options of every input pipe of this loop's connections.</summary>
    public PipeOptions InputPipeOptions { get; }

    /// <summary>This loop's syscall and byte counts (written only by this thread).</summary>
    public LoopCounters Counters { get; }

    /// <summary>The sends of this loop's connections made on the threads that flushed them (atomic adds).</summary>
    public LoopCounters FlusherCounters { get; }

    /// <summary>
    /// <see cref="Environment.TickCount64"/> as of this turn's wake-up: what a read or write stores to "touch" its
    /// connection (libsock's sock_touch), so touching costs a field store, not a clock read.
    /// </summary>
    public long Now { get; private set; } = Environment.TickCount64;

    /// <summary>What this loop's reads read into before the bytes are copied into a connection's pipe, so that a pipe
    /// holds pool blocks only for bytes received (<see cref="ReceiveBufferSize"/> bytes, while the thread runs).</summary>
    public byte* ReceiveBuffer { get; private set; }

    /// <summary>The iovecs and pins of this loop's writev calls (sends happen only on this thread).</summary>
    public WriteScratch WriteScratch { get; } = new();

    /// <summary>The messages of one sendmsg of bytes written by id (EpollConnection.ById.cs); loop only.</summary>
    public ByIdMessage?[] ByIdBatch { get; } = new ByIdMessage?[WriteScratch.MaxSegments];

    /// <summary>When the current turn started (<see cref="Environment.TickCount64"/>), or 0 while the loop waits in
    /// epoll_wait. Read by the stall watchdog on another thread.</summary>
    public long TurnStartedAt => Volatile.Read(ref _turnStartedAt);

    /// <summary>Counts turns, so the watchdog reports a long turn once.</summary>
    public long TurnNumber => Volatile.Read(ref _turnNumber);

    /// <summary>The handler whose event or work the loop is running now (for the watchdog's report), or null.</summary>
    public object? Serving => Volatile.Read(ref _serving);

    /// <summary>True on this loop's own thread.</summary>
    public bool IsCurrentThread => t_current == this;

    /// <summary>Completes when the thread has exited and every fd it owned is closed.</summary>
    public Task Stopped => _stopped.Task;

    public void Start() => _thread.Start();

    /// <summary>
    /// Queues <paramref name="action"/> to run on this loop's thread, after the current turn's events. Once the loop has
    /// stopped, work still arriving (an abort or a file job for a connection the stop already closed) runs on the
    /// caller's thread instead, one at a time, so it is never silently dropped and whoever awaits it is answered.
    /// </summary>
    public override void Schedule(Action<object?> action, object? state)
    {
        _work.Enqueue(new Work(action, state));
        if (t_current != this)
        {
            if (!_workFromOtherThreads)
            {
                // Read before written: while it is set, the threads that schedule don't all write the loop's cache line.
                _workFromOtherThreads = true;
            }

            // The enqueue above is an interlocked operation (a full fence), and the loop sets _terminated with one
            // before its last look at the queue: either it sees this work, or this thread sees the flag.
            if (Volatile.Read(ref _terminated) != 0)
            {
                RunLateWork();
            }
            else
            {
                Wake();
            }
        }
    }

    /// <summary>Registers <paramref name="fd"/> for <paramref name="events"/>, reported with <paramref name="id"/>.</summary>
    public Error Register(int fd, uint events, ulong id)
        => Libc.EpollControl(_epollFd, Libc.EPOLL_CTL_ADD, fd, events, id) == 0 ? Error.Success : Errno.Last;

    /// <summary>EPOLL_CTL_MOD with the same interest: the kernel re-checks readiness and queues an event if ready.</summary>
    public Error Rearm(int fd, uint events, ulong id)
        => Libc.EpollControl(_epollFd, Libc.EPOLL_CTL_MOD, fd, events, id) == 0 ? Error.Success : Errno.Last;

    public Error Unregister(int fd)
        => Libc.EpollControl(_epollFd, Libc.EPOLL_CTL_DEL, fd, 0, 0) == 0 ? Error.Success : Errno.Last;

    /// <summary>Asks <paramref name="connection"/> to read again next turn: it stopped at its read budget with input left.</summary>
    public void ReadAgainNextTurn(EpollConnection connection)
    {
        Debug.Assert(IsCurrentThread);
        _readAgain.Enqueue(connection);
    }

    private void Run()
    {
        t_current = this;
        byte* events = (byte*)NativeMemory.AlignedAlloc((nuint)(MaxEventsPerWait * EpollEvent.Size), 64);
        ReceiveBuffer = (byte*)NativeMemory.AlignedAlloc(ReceiveBufferSize, 64);
        try
        {
            while (!_stopRequested)
            {
                try
                {
                    RunTurn(events);
                }
                catch (Exception ex)
                {
                    // A bug in the loop's own bookkeeping (a connection's failures are handled where they happen):
                    // say so loudly, and keep serving the loop's other connections.
                    EpollLog.TurnFailed(_logger, Index, ex);
                }
            }
        }
        catch (Exception ex)
        {
            // Only what the turn's own catch cannot hold (its logging is guarded, so in practice nothing).
            EpollLog.LoopCrashed(_logger, Index, ex);
        }
        finally
        {
            StopHandlers();
            CloseWakeUp();
            CloseEpoll();

            // From here on, Schedule runs late work on its caller's thread; what was queued until now runs here.
            Interlocked.Exchange(ref _terminated, 1);
            RunLateWork();

            NativeMemory.AlignedFree(events);
            NativeMemory.AlignedFree(ReceiveBuffer);
            ReceiveBuffer = null;
            WriteScratch.Dispose();
            Context.Metrics.RemoveLoop(Counters);
            Context.Metrics.RemoveLoop(FlusherCounters);
            Context.ReleaseMemoryPool(MemoryPool);
            t_current = null;
            _stopped.TrySetResult();
        }
    }

    /// <summary>One turn: wait, dispatch the events, run the scheduled work, the reads left over, timers, idle checks.</summary>
    private void RunTurn(byte* events)
    {
        Volatile.Write(ref _turnStartedAt, 0);
        int count = WaitForEvents(events, NextWaitTimeout());
        if (count < 0)
        {
            Error error = Errno.Last;
            if (error != Error.EINTR)
            {
                EpollLog.EpollWaitFailed(_logger, Index, error.ToString());
                Thread.Sleep(10);
            }

            return;
        }

        Counters.EpollWaits++;
        Counters.Events += count;
        Now = Environment.TickCount64;
        _turnNumber++;
        Volatile.Write(ref _turnStartedAt, Now);
        Context.Metrics.LoopWokeUp(count);
        for (int i = 0; i < count; i++)
        {
            EpollEvent.Read(events, i, out uint flags, out ulong id);
            if (id == WakeUpId)
            {
                continue;
            }

            Dispatch(id, flags);
        }

        RunScheduledWork();
        RunReadAgain();
        RunDueTimers();
        CloseIdleConnections();
    }

    private void Dispatch(ulong id, uint flags)
    {
        IEpollHandler? handler = Table.Find(id);
        if (handler is null)
        {
            // A stale event: its handler closed earlier in this turn and the id's generation moved on.
            Context.Metrics.StaleEventDropped();
            return;
        }

        try
        {
            _serving = handler;
            handler.OnEvents(flags);
        }
        catch (Exception ex)
        {
            HandlerFailed(handler, ex);
        }
        finally
        {
            _serving = null;
        }
    }

    /// <summary>A handler threw on this loop (a bug): a connection is closed; the loop goes on either way.</summary>
    public void HandlerFailed(IEpollHandler handler, Exception ex)
    {
        EpollLog.HandlerFailed(_logger, Index, handler.Id, ex);
        (handler as EpollConnection)?.CloseAfterBug(ex);
    }

    private void RunScheduledWork()
    {
        // Only what was queued before we started: work that queues more work (a send that re-arms) runs next turn,
        // after the next epoll_wait, so I/O is never starved.
        int budget = _work.Count;
        while (budget-- > 0 && _work.TryDequeue(out Work work))
        {
            RunWork(work.Action, work.State);
        }
    }

    /// <summary>
    /// Runs scheduled work or a timer. Work that throws is a bug: when it belongs to a connection, that connection is
    /// closed (reason Error) so nobody waits on it forever; the loop goes on serving the others either way.
    /// </summary>
    private void RunWork(Action<object?> action, object? state)
    {
        try
        {
            _serving = state;
            action(state);
        }
        catch (Exception ex)
        {
            if (ConnectionOf(state) is { } connection)
            {
                HandlerFailed(connection, ex);
            }
            else
            {
                EpollLog.ScheduledWorkFailed(_logger, Index, ex);
            }
        }
        finally
        {
            _serving = null;
        }
    }

    /// <summary>
    /// The connection a piece of work belongs to: the connection itself as state, a tuple led by it (an abort with its
    /// reason, a file job), or one of its pipes' continuations, which the pipe schedules with the awaiting callback
    /// (a delegate on the connection) as state.
    /// </summary>
    public static EpollConnection? ConnectionOf(object? state) => state switch
    {
        EpollConnection connection => connection,
        System.Runtime.CompilerServices.ITuple { Length: > 0 } tuple => tuple[0] as EpollConnection,
        Delegate { Target: EpollConnection connection } => connection,
        _ => null,
    };

    private void RunReadAgain()
    {
        int budget = _readAgain.Count;
        while (budget-- > 0 && _readAgain.TryDequeue(out EpollConnection? connection))
        {
            try
            {
                _serving = connection;
                connection.ReadAgain();
            }
            catch (Exception ex)
            {
                HandlerFailed(connection, ex);
            }
            finally
            {
                _serving = null;
            }
        }
    }

    private readonly record struct Work(Action<object?> Action, object? State);
}

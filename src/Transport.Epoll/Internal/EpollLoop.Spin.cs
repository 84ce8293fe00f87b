using System.Diagnostics;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// The wait at the start of a turn, with the bounded spin of <see cref="EpollTransportOptions.SpinBeforeWait"/>: while
/// events keep coming within the spin window, the loop polls epoll with a zero timeout for up to that long before it
/// blocks. A loop that blocks in epoll_wait is woken by an interrupt and the scheduler, and an idle virtual CPU first
/// has to be resumed by the hypervisor (tens of microseconds per wake-up); the thread pool that the Sockets transport
/// uses spins for the same reason.
/// </summary>
/// <remarks>
/// The spin adapts: it runs only when the previous wait ended (with an event, a wake-up or scheduled work) within the
/// spin window. A spin that runs out turns spinning off until a wait is short again, so a loop whose requests come
/// further apart than the window spins at most once per burst, and an idle loop never spins. While spinning the loop
/// stays Awake (EpollLoop.WakeUp.cs): a Schedule from another thread then skips the eventfd write, so the spin looks at
/// the work queue itself.
/// </remarks>
internal sealed unsafe partial class EpollLoop
{
    /// <summary>The spin window in <see cref="Stopwatch"/> ticks; 0 when spinning is off.</summary>
    private readonly long _spinTicks;

    /// <summary>How long spinning stays off after a spin lost its core (milliseconds).</summary>
    private const long SpinBackOffMs = 100;

    /// <summary>
    /// A loop with more connections than this spins only while other threads hand it work (in the last
    /// <see cref="SpinTurnsAfterWorkFromOtherThreads"/> turns). The spin saves the wake-up
    /// of a sleeping core on the path of each request, which is what one connection's ping-pong waits on; with many
    /// connections the requests that arrive while the loop wakes are served in the same turn, so the wake-up is shared,
    /// and a loop that spins between them only turns idle time into polling: at 64 connections, inline, with the load
    /// generator the limit (wrk made slower per response), 12.9-13.8 µs of server CPU per request with the spin against
    /// 10.5 without, for the same requests per second and p99 (benchmarks/README.md). Work from other threads is
    /// different: the thread pool's flushes (the default scheduling, HTTP/2 streams) each need an eventfd write and a
    /// wake-up unless the loop is spinning (plaintext at 16 connections, default scheduling: 12.8 µs per request with
    /// the spin, 26.5 without it).
    /// </summary>
    private const int SpinMaxConnections = 8;

    /// <summary>How many turns a loop over <see cref="SpinMaxConnections"/> keeps spinning after another thread last
    /// handed it work: the thread pool's flushes come a few turns after the loop handed it the requests, not in every
    /// turn (one turn was too short: the defaults at 16 connections went from 1.9x Sockets to 1.4x).</summary>
    private const long SpinTurnsAfterWorkFromOtherThreads = 64;

    /// <summary>Set by <see cref="Schedule"/> when called from another thread; taken (cleared) by the loop at its waits.</summary>
    private bool _workFromOtherThreads;

    /// <summary>The last turn in which a loop over <see cref="SpinMaxConnections"/> may still spin for other threads' work.</summary>
    private long _spinForOtherThreadsUntilTurn;

    /// <summary>A yield that took this long gave the core to another process for a time slice; shorter ones are a
    /// kernel thread's or the runtime's brief work (Stopwatch ticks of 1 ms).</summary>
    private static readonly long s_lostCoreTicks = Stopwatch.Frequency / 1000;

    /// <summary>The previous wait ended within the spin window, so the next one spins first.</summary>
    private bool _spinHot;

    /// <summary>No spinning before this <see cref="Now"/>: a recent spin lost its core to another thread.</summary>
    private long _spinBackOffUntil;

    /// <summary>
    /// Waits for this turn's events: polls when work is ready, else spins (when hot) and then blocks until an event, a
    /// wake-up or <paramref name="timeout"/>. Returns epoll_wait's result.
    /// </summary>
    private int WaitForEvents(byte* events, int timeout)
    {
        if (!_work.IsEmpty || _readAgain.Count != 0)
        {
            return Libc.Wait(_epollFd, events, MaxEventsPerWait, 0);
        }

        long start = 0;
        if (_workFromOtherThreads)
        {
            _workFromOtherThreads = false;
            _spinForOtherThreadsUntilTurn = _turnNumber + SpinTurnsAfterWorkFromOtherThreads;
        }

        if (_spinTicks != 0 && timeout != 0 && (ConnectionCount <= SpinMaxConnections || _turnNumber <= _spinForOtherThreadsUntilTurn))
        {
            start = Stopwatch.GetTimestamp();
            if (_spinHot && Now >= _spinBackOffUntil && Spin(events, start, out int found))
            {
                return found;
            }
        }

        // Publish "may sleep" before the last look at the queue: a Schedule that raced with us either sees
        // Sleeping and writes the eventfd, or enqueued before our look and is seen here.
        Interlocked.Exchange(ref _wakeState, Sleeping);
        if (!_work.IsEmpty || _stopRequested)
        {
            timeout = 0;
        }

        int count = Libc.Wait(_epollFd, events, MaxEventsPerWait, timeout);
        Volatile.Write(ref _wakeState, Awake);
        if (start != 0)
        {
            // A wait that ended within the window (however it ended) means the next one is likely as short.
            _spinHot = Stopwatch.GetTimestamp() - start <= _spinTicks;
        }

        return count;
    }

    /// <summary>
    /// Polls epoll (zero timeout) and the work queue until something arrives or the window since
    /// <paramref name="start"/> has passed. True with epoll_wait's result in <paramref name="count"/> (0 when it was
    /// work or a stop that arrived); false when the window ran out, which turns spinning off.
    /// </summary>
    private bool Spin(byte* events, long start, out int count)
    {
        long deadline = start + _spinTicks;
        bool lostCore = false;
        LoopCounters counters = Counters;
        while (true)
        {
            if (!_work.IsEmpty || _stopRequested)
            {
                counters.SpinsFound++;
                count = 0;
                return true;
            }

            count = Libc.Wait(_epollFd, events, MaxEventsPerWait, 0);
            if (count != 0)
            {
                // Events, or an error the caller reports as it does for a blocking wait.
                counters.SpinsFound++;
                return true;
            }

            counters.EpollWaits++;
            if (lostCore)
            {
                // The last yield took over a millisecond and brought nothing: another process ran on this core for
                // its time slice. Where the core is shared like that, each yield can cost milliseconds,
                // while a loop blocked in epoll_wait is woken ahead of such threads: no spinning for a while.
                _spinBackOffUntil = Environment.TickCount64 + SpinBackOffMs;
                break;
            }

            long beforeYield = Stopwatch.GetTimestamp();
            if (beforeYield >= deadline)
            {
                break;
            }

            // sched_yield(2): a thread that shares this CPU (the thread pool running the application, in the default
            // scheduling) runs first, so the spin never delays the very work it waits for; alone, it returns at once.
            Thread.Yield();
            lostCore = Stopwatch.GetTimestamp() - beforeYield > s_lostCoreTicks;
        }

        counters.SpinsExpired++;
        _spinHot = false;
        return false;
    }
}

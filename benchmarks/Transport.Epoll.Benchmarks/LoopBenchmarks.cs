using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Epoll.Internal;

namespace Transport.Epoll.Benchmarks;

/// <summary>
/// Scheduling work on a loop from another thread: a Schedule that finds the loop asleep writes its eventfd; one that
/// finds it awake only enqueues. Per operation: schedule one item and wait until the loop ran it (a full wake-up).
/// </summary>
[MemoryDiagnoser]
public class LoopBenchmarks
{
    private static readonly Action<object?> s_signal = static state => ((ManualResetEventSlim)state!).Set();
    private static readonly Action<object?> s_nothing = static _ => { };
    private readonly ManualResetEventSlim _done = new();
    private EpollLoop? _loop;

    [GlobalSetup]
    public void Start()
    {
        var context = new TransportContext(new EpollTransportOptions(), NullLogger.Instance, new EpollMetrics(), null);
        _loop = new EpollLoop(0, new ConnectionTable(), context);
        _loop.Start();
    }

    [GlobalCleanup]
    public void Stop() => _loop?.Dispose();

    /// <summary>One item, and wait for it: the wake-up path (eventfd write, epoll_wait return).</summary>
    [Benchmark]
    public void ScheduleAndWaitForWakeUp()
    {
        _done.Reset();
        _loop!.Schedule(s_signal, _done);
        _done.Wait();
    }

    /// <summary>A burst of 100 items then one wait: most find the loop awake, so no eventfd write.</summary>
    [Benchmark(OperationsPerInvoke = 100)]
    public void ScheduleBurstOf100()
    {
        _done.Reset();
        for (int i = 0; i < 99; i++)
        {
            _loop!.Schedule(s_nothing, null);
        }

        _loop!.Schedule(s_signal, _done);
        _done.Wait();
    }
}

using System.Runtime.CompilerServices;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Every network wait in the suite is bounded by one of these, so a hang fails fast instead of stalling the run.</summary>
public static class Timeouts
{
    /// <summary>One network round trip, a connect, a request.</summary>
    public static readonly TimeSpan Default = TimeSpan.FromSeconds(10);

    /// <summary>A bulk transfer or a batch of many connections.</summary>
    public static readonly TimeSpan Bulk = TimeSpan.FromSeconds(30);

    /// <summary>Bounds an awaited task by <see cref="Default"/>: a <see cref="TimeoutException"/> naming the wait instead of a hang.</summary>
    public static async Task<T> WithTimeout<T>(this Task<T> task, TimeSpan? timeout = null, [CallerArgumentExpression(nameof(task))] string? what = null)
    {
        try
        {
            return await task.WaitAsync(timeout ?? Default);
        }
        catch (TimeoutException ex)
        {
            throw new TimeoutException($"Waited {(timeout ?? Default).TotalSeconds:0.#} s for: {what}", ex);
        }
    }

    /// <summary>Bounds an awaited task by <see cref="Default"/>: a <see cref="TimeoutException"/> naming the wait instead of a hang.</summary>
    public static async Task WithTimeout(this Task task, TimeSpan? timeout = null, [CallerArgumentExpression(nameof(task))] string? what = null)
    {
        try
        {
            await task.WaitAsync(timeout ?? Default);
        }
        catch (TimeoutException ex)
        {
            throw new TimeoutException($"Waited {(timeout ?? Default).TotalSeconds:0.#} s for: {what}", ex);
        }
    }

    /// <summary>Bounds an awaited value task by <see cref="Default"/>.</summary>
    public static Task<T> WithTimeout<T>(this ValueTask<T> task, TimeSpan? timeout = null, [CallerArgumentExpression(nameof(task))] string? what = null) =>
        task.AsTask().WithTimeout(timeout, what);

    /// <summary>Bounds an awaited value task by <see cref="Default"/>.</summary>
    public static Task WithTimeout(this ValueTask task, TimeSpan? timeout = null, [CallerArgumentExpression(nameof(task))] string? what = null) =>
        task.AsTask().WithTimeout(timeout, what);

    /// <summary>A token that cancels after <paramref name="timeout"/> (default <see cref="Default"/>).</summary>
    public static CancellationTokenSource Cts(TimeSpan? timeout = null) => new(timeout ?? Default);
}

/// <summary>Polls a condition that has no event to wait for (fd counts, thread lists), with a deadline.</summary>
public static class Poll
{
    /// <summary>Polls <paramref name="condition"/> every <paramref name="interval"/> until it holds; false if the deadline passes first.</summary>
    public static Task<bool> UntilAsync(Func<bool> condition, TimeSpan? timeout = null, TimeSpan? interval = null) =>
        UntilAsync(() => Task.FromResult(condition()), timeout, interval);

    /// <summary>Polls an asynchronous <paramref name="condition"/> until it holds; false if the deadline passes first.</summary>
    public static async Task<bool> UntilAsync(Func<Task<bool>> condition, TimeSpan? timeout = null, TimeSpan? interval = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Timeouts.Default);
        while (true)
        {
            if (await condition())
            {
                return true;
            }

            if (DateTime.UtcNow >= deadline)
            {
                return false;
            }

            await Task.Delay(interval ?? TimeSpan.FromMilliseconds(20));
        }
    }

    /// <summary>
    /// Samples <paramref name="read"/> until the value has not changed for <paramref name="stableFor"/>: the way to see
    /// that something stalled. Returns the stable value; throws <see cref="TimeoutException"/> if it never settles.
    /// </summary>
    public static async Task<long> UntilStableAsync(Func<long> read, TimeSpan stableFor, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Timeouts.Bulk);
        long last = read();
        var lastChange = DateTime.UtcNow;
        while (DateTime.UtcNow < deadline)
        {
            await Task.Delay(25);
            long now = read();
            if (now != last)
            {
                last = now;
                lastChange = DateTime.UtcNow;
            }
            else if (DateTime.UtcNow - lastChange >= stableFor)
            {
                return now;
            }
        }

        throw new TimeoutException($"The value kept changing for {timeout ?? Timeouts.Bulk}; last value {last}.");
    }
}

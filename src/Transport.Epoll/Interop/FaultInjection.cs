using System.Globalization;
using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>
/// The test seam: makes syscalls fail or fall short the way the kernel can (EINTR anywhere, EAGAIN, a write that takes
/// one byte or a random part, a read that returns a few bytes, ECONNRESET/EPIPE mid-stream, ENOBUFS, EMFILE on
/// accept). Compiled in and off by default; <see cref="IsEnabled"/> is a static readonly read once at start-up, which
/// the JIT folds to a constant, so the checks cost nothing when it is off.
/// </summary>
/// <remarks>
/// Turn it on for a whole process with the environment variable <c>TRANSPORT_EPOLL_FAULTS</c>, e.g.
/// <c>seed=42;rate=0.05</c> (short reads/writes, EINTR, EAGAIN, EMFILE: nothing a correct transport may lose a byte
/// to) or <c>seed=42;rate=0.05;resets=0.001</c> (also ECONNRESET, EPIPE and ENOBUFS, which end connections).
/// Each thread draws from its own generator seeded from the seed and the thread's loop index, so a run is repeatable
/// as far as thread timing allows.
/// </remarks>
internal static class FaultInjection
{
    public const string EnvironmentVariable = "TRANSPORT_EPOLL_FAULTS";

    public static readonly bool IsEnabled;
    private static readonly int s_seed;
    private static readonly double s_rate;
    private static readonly double s_resetRate;
    private static readonly double s_zeroCopyNoBufsRate;
    private static readonly bool s_zeroCopyReorder;

    [ThreadStatic]
    private static Random? t_random;

    [ThreadStatic]
    private static bool t_injectedWouldBlock;

    [ThreadStatic]
    private static Stack<Libc.ZeroCopyCompletion>? t_heldCompletions;

    [ThreadStatic]
    private static int t_heldCompletionsFd;

    static FaultInjection()
    {
        string? spec = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (string.IsNullOrWhiteSpace(spec))
        {
            return;
        }

        foreach (string part in spec.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] pair = part.Split('=', 2, StringSplitOptions.TrimEntries);
            string value = pair.Length == 2 ? pair[1] : "";
            switch (pair[0])
            {
                case "seed":
                    s_seed = int.Parse(value, CultureInfo.InvariantCulture);
                    break;
                case "rate":
                    s_rate = double.Parse(value, CultureInfo.InvariantCulture);
                    break;
                case "resets":
                    s_resetRate = double.Parse(value, CultureInfo.InvariantCulture);
                    break;
                case "zerocopy_enobufs":
                    s_zeroCopyNoBufsRate = double.Parse(value, CultureInfo.InvariantCulture);
                    break;
                case "zerocopy_reorder":
                    s_zeroCopyReorder = value == "1";
                    break;
                default:
                    throw new FormatException($"{EnvironmentVariable}: unknown setting '{pair[0]}' (known: seed, rate, resets, zerocopy_enobufs, zerocopy_reorder).");
            }
        }

        IsEnabled = s_rate > 0 || s_resetRate > 0 || s_zeroCopyNoBufsRate > 0 || s_zeroCopyReorder;
    }

    public static int Seed => s_seed;

    /// <summary>
    /// Runs on the waking thread just before it writes a loop's eventfd (the argument is that fd). Tests use it to hold
    /// a waker where a preemption could: between winning the wake-up and its write. Null outside those tests.
    /// </summary>
    public static Action<int>? BeforeEventFdWrite { get; set; }

    private static Random Random => t_random ??= new Random(HashCode.Combine(s_seed, Thread.CurrentThread.Name));

    /// <summary>True once after an injected EAGAIN, short read or partial write: the kernel's readiness did not change,
    /// so no new edge will come by itself.</summary>
    public static bool TakeInjectedWouldBlock()
    {
        bool value = t_injectedWouldBlock;
        t_injectedWouldBlock = false;
        return value;
    }

    /// <summary>Before a read: maybe fail it (returns true with errno set) or shorten it.</summary>
    public static bool BeforeRead(ref nuint count)
    {
        double roll = Random.NextDouble();
        if (roll < s_resetRate)
        {
            return Fail(Error.ECONNRESET);
        }

        roll = Random.NextDouble();
        if (roll < s_rate)
        {
            return Fail(Error.EINTR);
        }

        if (roll < 2 * s_rate)
        {
            t_injectedWouldBlock = true;
            return Fail(Error.EAGAIN);
        }

        if (roll < 4 * s_rate && count > 1)
        {
            // A short read tells the transport the socket is drained; here it is not, so no edge would follow.
            t_injectedWouldBlock = true;
            count = (nuint)Random.Next(1, (int)Math.Min(count, 64));
        }

        return false;
    }

    /// <summary>Before a send: maybe fail it, or cut it to one byte or a random part.</summary>
    public static bool BeforeWrite(ref nuint allowedBytes)
    {
        double roll = Random.NextDouble();
        if (roll < s_resetRate)
        {
            return Fail(Random.Next(3) switch { 0 => Error.EPIPE, 1 => Error.ECONNRESET, _ => Error.ENOBUFS });
        }

        roll = Random.NextDouble();
        if (roll < s_rate)
        {
            return Fail(Error.EINTR);
        }

        if (roll < 2 * s_rate)
        {
            t_injectedWouldBlock = true;
            return Fail(Error.EAGAIN);
        }

        if (roll < 3 * s_rate)
        {
            t_injectedWouldBlock = true;
            allowedBytes = 1;
        }
        else if (roll < 5 * s_rate && allowedBytes > 1)
        {
            // A partial write parks the connection on EPOLLOUT, which a kernel with room would never raise.
            t_injectedWouldBlock = true;
            allowedBytes = (nuint)Random.NextInt64(1, (long)allowedBytes);
        }

        return false;
    }

    /// <summary>A MSG_ZEROCOPY send failing with ENOBUFS, as when the socket's optmem limit is reached (the pinned
    /// pages are charged to it): the transport must turn zero-copy off and send the bytes normally.</summary>
    public static bool InjectNoBuffers(int flags)
        => (flags & Libc.MSG_ZEROCOPY) != 0 && Random.NextDouble() < s_zeroCopyNoBufsRate && Fail(Error.ENOBUFS);

    /// <summary>Whether zero-copy completions are handed over out of order (<c>zerocopy_reorder=1</c>).</summary>
    public static bool ReordersZeroCopyCompletions => s_zeroCopyReorder;

    /// <summary>
    /// Zero-copy completions as the kernel may deliver them on a real network (msg_zerocopy.rst: out of order, after a
    /// retransmission or a teardown): whatever the socket's error queue holds is read at once, each range is split
    /// into single sends, and they are handed over newest first. Loopback always completes in order, so without this
    /// an out-of-order completion cannot be produced. Returns as <see cref="Libc.ReadZeroCopyNotification"/> does.
    /// </summary>
    public static int ReadReorderedCompletion(int fd, out Libc.ZeroCopyCompletion completion)
    {
        Stack<Libc.ZeroCopyCompletion> held = t_heldCompletions ??= new Stack<Libc.ZeroCopyCompletion>();
        if (t_heldCompletionsFd != fd)
        {
            held.Clear();
            t_heldCompletionsFd = fd;
        }

        if (held.Count == 0)
        {
            int result;
            while ((result = Libc.ReadZeroCopyNotification(fd, out Libc.ZeroCopyCompletion read)) >= 0)
            {
                for (uint id = read.First; result > 0; id++)
                {
                    held.Push(read with { First = id, Last = id });
                    if (id == read.Last)
                    {
                        break;
                    }
                }
            }
        }

        if (held.Count == 0)
        {
            completion = default;
            _ = Fail(Error.EAGAIN);
            return -1;
        }

        completion = held.Pop();
        return 1;
    }

    /// <summary>Before accept4: maybe fail with EINTR, ECONNABORTED or EMFILE (no connection is taken).</summary>
    public static bool BeforeAccept()
    {
        double roll = Random.NextDouble();
        return roll < s_rate ? Fail(Error.EINTR)
            : roll < 2 * s_rate ? Fail(Error.ECONNABORTED)
            : roll < 2.5 * s_rate && Fail(Error.EMFILE);
    }

    /// <summary>Before epoll_wait: maybe fail with EINTR.</summary>
    public static bool BeforeWait() => Random.NextDouble() < s_rate && Fail(Error.EINTR);

    private static bool Fail(Error error)
    {
        Marshal.SetLastPInvokeError((int)error);
        return true;
    }
}

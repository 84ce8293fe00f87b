namespace Transport.Epoll.Interop;

/// <summary>
/// The calls on the data path, routed through <see cref="FaultInjection"/>. With injection off (the default) each is
/// the plain syscall: the <c>IsEnabled</c> branch is folded away by the JIT.
/// </summary>
internal static unsafe partial class Libc
{
    public static nint ReadSocket(int fd, void* buffer, nuint count)
    {
        if (FaultInjection.IsEnabled && FaultInjection.BeforeRead(ref count))
        {
            return -1;
        }

        return recv(fd, buffer, count, 0);
    }

    public static int Accept(int fd, byte* address, int* length)
    {
        if (FaultInjection.IsEnabled && FaultInjection.BeforeAccept())
        {
            return -1;
        }

        return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }

    public static int Wait(int epfd, void* events, int maxevents, int timeout)
    {
        if (FaultInjection.IsEnabled && FaultInjection.BeforeWait())
        {
            return -1;
        }

        return epoll_wait(epfd, events, maxevents, timeout);
    }

    /// <summary>One zero-copy notification from the socket's error queue (see <see cref="ReadZeroCopyNotification"/>).</summary>
    public static int ReadZeroCopyCompletion(int fd, out ZeroCopyCompletion completion)
    {
        if (FaultInjection.IsEnabled && FaultInjection.ReordersZeroCopyCompletions)
        {
            return FaultInjection.ReadReorderedCompletion(fd, out completion);
        }

        return ReadZeroCopyNotification(fd, out completion);
    }

    /// <summary>
    /// sendmsg(2) with MSG_NOSIGNAL over <paramref name="count"/> iovecs: writev's gather, but a peer that is gone
    /// yields EPIPE instead of a SIGPIPE that would kill the process (send(2), "MSG_NOSIGNAL"). One iovec (a small
    /// response) goes out with send(2), the same call without the message header.
    /// </summary>
    public static nint SendVectors(int fd, IOVector* vectors, int count, int flags = 0)
    {
        if (FaultInjection.IsEnabled)
        {
            nuint total = 0;
            for (int i = 0; i < count; i++)
            {
                total += vectors[i].Count;
            }

            nuint allowed = total;
            if (FaultInjection.BeforeWrite(ref allowed))
            {
                return -1;
            }

            if (FaultInjection.InjectNoBuffers(flags))
            {
                return -1;
            }

            if (allowed < total)
            {
                return SendTruncated(fd, vectors, count, allowed, flags);
            }
        }

        if (count == 1)
        {
            return send(fd, vectors->Base, vectors->Count, MSG_NOSIGNAL | flags);
        }

        MessageHeader header = default;
        header.Vectors = vectors;
        header.VectorCount = (nuint)count;
        return sendmsg(fd, &header, MSG_NOSIGNAL | flags);
    }

    /// <summary>A send the kernel took only <paramref name="allowed"/> bytes of: the caller sees a real partial write.</summary>
    private static nint SendTruncated(int fd, IOVector* vectors, int count, nuint allowed, int flags)
    {
        IOVector* copy = stackalloc IOVector[count];
        int used = 0;
        for (; used < count && allowed > 0; used++)
        {
            copy[used] = vectors[used];
            if (copy[used].Count > allowed)
            {
                copy[used].Count = allowed;
            }

            allowed -= copy[used].Count;
        }

        MessageHeader header = default;
        header.Vectors = copy;
        header.VectorCount = (nuint)used;
        return sendmsg(fd, &header, MSG_NOSIGNAL | flags);
    }
}

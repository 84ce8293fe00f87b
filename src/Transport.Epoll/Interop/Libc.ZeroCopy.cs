using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>
/// MSG_ZEROCOPY (Documentation/networking/msg_zerocopy.rst): the kernel pins the pages of a send instead of copying
/// them, and later queues a notification on the socket's error queue saying which sends (a range of a per-socket
/// counter, one number per successful zero-copy sendmsg) it no longer needs, and whether it copied them after all.
/// </summary>
internal static unsafe partial class Libc
{
    public const int SO_ZEROCOPY = 60;
    public const int MSG_ZEROCOPY = 0x4000000;
    public const int MSG_ERRQUEUE = 0x2000;
    private const int SOL_IP = 0;
    private const int IP_RECVERR = 11;
    private const int SOL_IPV6 = 41;
    private const int IPV6_RECVERR = 25;
    private const byte SO_EE_ORIGIN_ZEROCOPY = 5;
    private const byte SO_EE_CODE_ZEROCOPY_COPIED = 1;

    [LibraryImport(Name, SetLastError = true)]
    public static partial nint recvmsg(int fd, MessageHeader* msg, int flags);

    /// <summary>One zero-copy notification: sends <see cref="First"/> to <see cref="Last"/> (inclusive, wrapping
    /// 32-bit counters) are done; <see cref="Copied"/> when the kernel copied their data anyway.</summary>
    public readonly record struct ZeroCopyCompletion(uint First, uint Last, bool Copied);

    /// <summary>
    /// Reads one notification from the error queue. Returns 1 with a zero-copy completion, 0 for an entry that is
    /// not one (skipped), -1 with errno (EAGAIN: the queue is empty).
    /// </summary>
    public static int ReadZeroCopyNotification(int fd, out ZeroCopyCompletion completion)
    {
        completion = default;

        // struct cmsghdr { size_t len; int level; int type; } then struct sock_extended_err { u32 ee_errno; u8 origin,
        // type, code, pad; u32 info; u32 data; } and the offender's address: 128 bytes hold it.
        byte* control = stackalloc byte[128];
        MessageHeader header = default;
        header.Control = control;
        header.ControlLength = 128;
        nint result = recvmsg(fd, &header, MSG_ERRQUEUE);
        if (result < 0)
        {
            return -1;
        }

        if (header.ControlLength < 16 + 16)
        {
            return 0;
        }

        int level = *(int*)(control + 8);
        int type = *(int*)(control + 12);
        bool isRecvErr = (level == SOL_IP && type == IP_RECVERR) || (level == SOL_IPV6 && type == IPV6_RECVERR);
        byte* error = control + 16;
        if (!isRecvErr || *(uint*)error != 0 || error[4] != SO_EE_ORIGIN_ZEROCOPY)
        {
            return 0;
        }

        completion = new ZeroCopyCompletion(*(uint*)(error + 8), *(uint*)(error + 12), (error[6] & SO_EE_CODE_ZEROCOPY_COPIED) != 0);
        return 1;
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Transport.Epoll.Interop;

/// <summary>
/// <c>struct epoll_event { uint32_t events; epoll_data_t data; }</c>. glibc's &lt;sys/epoll.h&gt; declares it
/// <c>__EPOLL_PACKED</c> on x86-64 (12 bytes, data at offset 4) and naturally aligned elsewhere, e.g. arm64
/// (16 bytes, data at offset 8). Both layouts exist as structs so their sizes can be tested; the event loop reads a
/// buffer of them through <see cref="Read"/> with the layout of the running process.
/// </summary>
internal static unsafe class EpollEvent
{
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    internal struct Packed
    {
        public uint Events;
        public ulong Data;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct Natural
    {
        public uint Events;
        public ulong Data;
    }

    /// <summary>Whether this process uses the packed layout (x86 and x86-64).</summary>
    public static readonly bool IsPacked =
        RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86;

    /// <summary>sizeof(struct epoll_event) for this process.</summary>
    public static readonly int Size = IsPacked ? sizeof(Packed) : sizeof(Natural);

    /// <summary>The larger of the two layouts, for stack buffers.</summary>
    public const int MaxSize = 16;

    private static readonly int s_dataOffset = IsPacked ? 4 : 8;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Read(byte* buffer, int index, out uint events, out ulong data)
    {
        byte* record = buffer + (index * Size);
        events = Unsafe.ReadUnaligned<uint>(record);
        data = Unsafe.ReadUnaligned<ulong>(record + s_dataOffset);
    }

    public static void Write(byte* buffer, int index, uint events, ulong data)
    {
        byte* record = buffer + (index * Size);
        new Span<byte>(record, Size).Clear();
        Unsafe.WriteUnaligned(record, events);
        Unsafe.WriteUnaligned(record + s_dataOffset, data);
    }
}

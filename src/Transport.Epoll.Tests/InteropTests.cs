using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Tests;

public sealed class InteropTests
{
    [Fact]
    public void The_packed_epoll_event_is_12_bytes_with_data_at_offset_4()
    {
        Assert.Equal(12, Marshal.SizeOf<EpollEvent.Packed>());
        Assert.Equal(12, Unsafe.SizeOf<EpollEvent.Packed>());
        Assert.Equal(4, (int)Marshal.OffsetOf<EpollEvent.Packed>(nameof(EpollEvent.Packed.Data)));
    }

    [Fact]
    public void The_natural_epoll_event_is_16_bytes_with_data_at_offset_8()
    {
        Assert.Equal(16, Marshal.SizeOf<EpollEvent.Natural>());
        Assert.Equal(16, Unsafe.SizeOf<EpollEvent.Natural>());
        Assert.Equal(8, (int)Marshal.OffsetOf<EpollEvent.Natural>(nameof(EpollEvent.Natural.Data)));
    }

    [Fact]
    public void The_epoll_event_in_use_is_12_bytes_on_x64_and_16_on_arm64()
    {
        int expected = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 or Architecture.X86 => 12,
            Architecture.Arm64 => 16,
            var other => throw new PlatformNotSupportedException($"No expectation for {other}."),
        };

        Assert.Equal(expected, EpollEvent.Size);
    }

    [Fact]
    public unsafe void An_epoll_event_written_and_read_back_keeps_its_events_and_data()
    {
        byte* buffer = stackalloc byte[EpollEvent.MaxSize * 3];
        EpollEvent.Write(buffer, 0, 0x1, 0x0102030405060708UL);
        EpollEvent.Write(buffer, 1, 0x80000004u, ulong.MaxValue);
        EpollEvent.Write(buffer, 2, 0, 42);

        EpollEvent.Read(buffer, 0, out uint e0, out ulong d0);
        EpollEvent.Read(buffer, 1, out uint e1, out ulong d1);
        EpollEvent.Read(buffer, 2, out uint e2, out ulong d2);

        Assert.Equal((0x1u, 0x0102030405060708UL), (e0, d0));
        Assert.Equal((0x80000004u, ulong.MaxValue), (e1, d1));
        Assert.Equal((0u, 42UL), (e2, d2));
    }
}

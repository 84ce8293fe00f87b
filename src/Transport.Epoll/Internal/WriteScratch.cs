using System.Buffers;
using System.Runtime.InteropServices;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// A loop's reusable iovec array and the pins that keep its buffers in place during one writev. Sends happen only on
/// the loop's thread, so one per loop is enough and no send allocates.
/// </summary>
internal sealed unsafe class WriteScratch : IDisposable
{
    /// <summary>Segments per writev. Kestrel's blocks are 4 KiB, so 64 of them is 256 KiB per call, more than a
    /// socket's send buffer usually takes at once; the kernel's limit is IOV_MAX (1024).</summary>
    public const int MaxSegments = 64;

    public WriteScratch()
    {
        Vectors = (IOVector*)NativeMemory.Alloc(MaxSegments, (nuint)sizeof(IOVector));
    }

    public IOVector* Vectors { get; private set; }

    public MemoryHandle[] Pins { get; } = new MemoryHandle[MaxSegments];

    public void Dispose()
    {
        NativeMemory.Free(Vectors);
        Vectors = null;
    }
}

/// <summary>The pins of one writev made on a flushing thread, on that thread's stack (no allocation, nothing shared).</summary>
[System.Runtime.CompilerServices.InlineArray(WriteScratch.MaxSegments)]
internal struct FlusherPins
{
    private MemoryHandle _first;
}

using System.Collections.Concurrent;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Transport.Epoll.Internal;

/// <summary>
/// One message written by id: a copy of the caller's bytes in a pinned buffer (the loop hands its address to sendmsg
/// without pinning per call), reference-counted so that a broadcast shares one copy among the connections of a loop.
/// Messages and their buffers are pooled: a write by id allocates nothing once the pool is warm.
/// </summary>
internal sealed unsafe class ByIdMessage
{
    /// <summary>Buffers up to this size go back to the pool; larger ones are left to the GC (a rare big message should
    /// not keep its memory for the life of the process).</summary>
    private const int MaxPooledCapacity = 64 * 1024;
    private const int MaxPooled = 4096;
    private const int MinCapacity = 256;

    private static readonly ConcurrentQueue<ByIdMessage> s_pool = new();
    private static int s_pooled;

    private byte[] _buffer = [];
    private int _references;

    public int Length { get; private set; }

    /// <summary>The first byte; valid while a reference is held (the buffer is on the pinned object heap).</summary>
    public byte* Pointer => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));

    /// <summary>A message holding a copy of <paramref name="bytes"/>, with one reference (the caller's).</summary>
    public static ByIdMessage Rent(ReadOnlySpan<byte> bytes)
    {
        if (!s_pool.TryDequeue(out ByIdMessage? message))
        {
            message = new ByIdMessage();
        }
        else
        {
            Interlocked.Decrement(ref s_pooled);
        }

        if (message._buffer.Length < bytes.Length)
        {
            int capacity = bytes.Length <= MaxPooledCapacity ? Math.Max(MinCapacity, (int)BitOperations.RoundUpToPowerOf2((uint)bytes.Length)) : bytes.Length;
            message._buffer = GC.AllocateUninitializedArray<byte>(capacity, pinned: true);
        }

        bytes.CopyTo(message._buffer);
        message.Length = bytes.Length;
        message._references = 1;
        return message;
    }

    public void AddReference() => Interlocked.Increment(ref _references);

    /// <summary>Takes <paramref name="count"/> references at once (a loop's fan-out takes one per connection it may
    /// queue the message on, then gives back those it did not use: two atomic operations instead of one per connection).</summary>
    public void AddReferences(int count) => Interlocked.Add(ref _references, count);

    /// <summary>Drops one reference; the last one returns the message to the pool.</summary>
    public void Release() => Release(1);

    /// <summary>Drops <paramref name="count"/> references; the last one returns the message to the pool.</summary>
    public void Release(int count)
    {
        if (Interlocked.Add(ref _references, -count) != 0)
        {
            return;
        }

        if (_buffer.Length <= MaxPooledCapacity && Interlocked.Increment(ref s_pooled) <= MaxPooled)
        {
            s_pool.Enqueue(this);
        }
        else if (_buffer.Length <= MaxPooledCapacity)
        {
            Interlocked.Decrement(ref s_pooled);
        }
    }
}

using System.Buffers.Binary;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>8-byte records (a tag and its complement) that say which connection a byte belongs to: cross-talk tests
/// write them and check that every record a peer receives carries its own tag.</summary>
public static class TaggedRecord
{
    public const int Size = 8;

    public static byte[] Repeat(int tag, int count)
    {
        var bytes = new byte[count * Size];
        for (int i = 0; i < count; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * Size), tag);
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan((i * Size) + 4), ~tag);
        }

        return bytes;
    }

    /// <summary>The tag of a record, or -2 for bytes that are not a record.</summary>
    public static int Parse(ReadOnlySpan<byte> record)
    {
        int tag = BinaryPrimitives.ReadInt32LittleEndian(record);
        return BinaryPrimitives.ReadInt32LittleEndian(record[4..]) == ~tag ? tag : -2;
    }

    /// <summary>Null when <paramref name="bytes"/> are whole records of <paramref name="tag"/>; else what is wrong.</summary>
    public static string? Check(byte[] bytes, int tag)
    {
        if (bytes.Length % Size != 0)
        {
            return $"connection of tag {tag}: {bytes.Length} bytes, not whole records.";
        }

        for (int offset = 0; offset < bytes.Length; offset += Size)
        {
            int found = Parse(bytes.AsSpan(offset, Size));
            if (found != tag)
            {
                return $"connection of tag {tag}: the record at byte {offset} has tag {found} (raw {Convert.ToHexString(bytes, offset, Size)}).";
            }
        }

        return null;
    }
}

using System.Buffers.Binary;

namespace Transport.Epoll.Tests.Addressing;

/// <summary>
/// Messages of 16-byte records that say which connection, writer and message they belong to, and where in the message
/// each record sits: a receiver can then tell a message cut by another, one on the wrong connection, and a writer's
/// messages out of order. A message has 1 to 4 records, so messages differ in length.
/// </summary>
public static class ByIdRecord
{
    public const int Size = 16;

    public static int Records(int writer, int seq) => 1 + ((writer + seq) & 3);

    public static int MessageLength(int writer, int seq) => Records(writer, seq) * Size;

    public static byte[] Message(int connection, int writer, int seq)
    {
        int records = Records(writer, seq);
        var bytes = new byte[records * Size];
        for (int i = 0; i < records; i++)
        {
            Span<byte> record = bytes.AsSpan(i * Size, Size);
            BinaryPrimitives.WriteInt32LittleEndian(record, connection);
            BinaryPrimitives.WriteInt16LittleEndian(record[4..], (short)writer);
            record[6] = (byte)i;
            record[7] = (byte)records;
            BinaryPrimitives.WriteInt32LittleEndian(record[8..], seq);
            BinaryPrimitives.WriteInt32LittleEndian(record[12..], Checksum(connection, writer, seq, i, records));
        }

        return bytes;
    }

    /// <summary>Null when <paramref name="bytes"/> are whole messages, all for <paramref name="connection"/> (or the
    /// handler's own, connection -1, writer -1), each writer's in order and none missing; else what is wrong.</summary>
    public static string? Check(byte[] bytes, int connection, int writers, int messagesPerWriter, int handlerMessages)
    {
        if (bytes.Length % Size != 0)
        {
            return $"connection {connection}: {bytes.Length} bytes, not whole records";
        }

        var next = new int[writers + 1];
        int offset = 0;
        while (offset < bytes.Length)
        {
            ReadOnlySpan<byte> first = bytes.AsSpan(offset, Size);
            int conn = BinaryPrimitives.ReadInt32LittleEndian(first);
            int writer = BinaryPrimitives.ReadInt16LittleEndian(first[4..]);
            int seq = BinaryPrimitives.ReadInt32LittleEndian(first[8..]);
            int records = first[7];
            if (first[6] != 0 || records is < 1 or > 4 || offset + (records * Size) > bytes.Length)
            {
                return $"connection {connection}: at byte {offset} a record that does not start a message ({Convert.ToHexString(first)})";
            }

            for (int i = 0; i < records; i++)
            {
                ReadOnlySpan<byte> record = bytes.AsSpan(offset + (i * Size), Size);
                if (BinaryPrimitives.ReadInt32LittleEndian(record) != conn || BinaryPrimitives.ReadInt16LittleEndian(record[4..]) != writer
                    || record[6] != i || record[7] != records || BinaryPrimitives.ReadInt32LittleEndian(record[8..]) != seq
                    || BinaryPrimitives.ReadInt32LittleEndian(record[12..]) != Checksum(conn, writer, seq, i, records))
                {
                    return $"connection {connection}: message at byte {offset} (writer {writer}, seq {seq}) is cut at its record {i} ({Convert.ToHexString(record)})";
                }
            }

            bool handler = writer == -1;
            if (handler ? conn != -1 : conn != connection)
            {
                return $"connection {connection}: message at byte {offset} was written to connection {conn}";
            }

            if (writer < -1 || writer >= writers)
            {
                return $"connection {connection}: message at byte {offset} has writer {writer}";
            }

            ref int expected = ref next[writer + 1];
            if (seq != expected)
            {
                return $"connection {connection}: writer {writer} sent message {seq} where {expected} was due";
            }

            expected++;
            offset += records * Size;
        }

        if (next[0] != handlerMessages)
        {
            return $"connection {connection}: {next[0]} of the handler's {handlerMessages} messages";
        }

        for (int w = 0; w < writers; w++)
        {
            if (next[w + 1] != messagesPerWriter)
            {
                return $"connection {connection}: {next[w + 1]} of writer {w}'s {messagesPerWriter} messages";
            }
        }

        return null;
    }

    private static int Checksum(int connection, int writer, int seq, int index, int records)
        => (connection * 31) ^ (writer * 17) ^ (seq * 7) ^ ((index << 8) | records) ^ 0x5A5A5A5A;
}

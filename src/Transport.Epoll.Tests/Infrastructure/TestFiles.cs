namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Test files with known contents, made once per test class in a folder of their own and removed after.</summary>
public sealed class TestFiles : IDisposable
{
    public TestFiles()
    {
        Folder = Directory.CreateTempSubdirectory("epoll-sendfile-").FullName;
    }

    public string Folder { get; }

    /// <summary>A file of <paramref name="size"/> pseudo-random bytes (deterministic for a size).</summary>
    public string Create(long size, string? name = null)
    {
        string path = Path.Combine(Folder, name ?? $"file-{size}.bin");
        if (File.Exists(path))
        {
            return path;
        }

        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        var random = new Random((int)(size % int.MaxValue) + 17);
        var chunk = new byte[1024 * 1024];
        long left = size;
        while (left > 0)
        {
            random.NextBytes(chunk);
            int n = (int)Math.Min(chunk.Length, left);
            stream.Write(chunk, 0, n);
            left -= n;
        }

        return path;
    }

    /// <summary>SHA-256 of <paramref name="count"/> bytes of the file from <paramref name="offset"/>.</summary>
    public static string Hash(string path, long offset, long count)
    {
        using var stream = File.OpenRead(path);
        stream.Position = offset;
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        var buffer = new byte[1024 * 1024];
        while (count > 0)
        {
            int n = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, count));
            if (n == 0)
            {
                throw new EndOfStreamException();
            }

            sha.AppendData(buffer, 0, n);
            count -= n;
        }

        return Convert.ToHexString(sha.GetHashAndReset());
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
            // A file still open by a server that failed to stop: the OS temp cleaner gets it.
        }
    }
}

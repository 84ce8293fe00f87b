using Microsoft.Win32.SafeHandles;

namespace Transport.Epoll;

/// <summary>Conveniences over <see cref="IConnectionSendFileFeature"/>.</summary>
public static class SendFileFeatureExtensions
{
    /// <summary>
    /// Opens <paramref name="path"/>, sends <paramref name="count"/> bytes from <paramref name="offset"/> (the rest of
    /// the file when null) and closes it when done, as libsock's close-when-done does: for a caller that does not keep
    /// the file open for other connections.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the file.</exception>
    public static async Task SendFileAsync(this IConnectionSendFileFeature feature, string path, long offset = 0, long? count = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(feature);
        ArgumentException.ThrowIfNullOrEmpty(path);
        using SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        await feature.SendFileAsync(file, offset, RangeSize(file, offset, count), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The byte count of <c>[offset, offset + count)</c> of the file (to its end when null), checked against its length.</summary>
    internal static long RangeSize(SafeFileHandle file, long offset, long? count)
    {
        long length = RandomAccess.GetLength(file);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(offset, length);
        long size = count ?? length - offset;
        ArgumentOutOfRangeException.ThrowIfNegative(size, nameof(count));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, length - offset, nameof(count));
        return size;
    }
}

using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Win32.SafeHandles;
using Transport.Epoll.Internal;

namespace Transport.Epoll.Http;

/// <summary>
/// Kestrel's response body feature with a <see cref="SendFileAsync"/> that goes through sendfile(2) when that is safe.
/// Everything else is Kestrel's. Kestrel counts the body bytes its writer saw against Content-Length (and closes
/// the connection when they differ), so the file is accounted for with placeholder bytes: zeroed pipe memory advanced
/// through Kestrel's writer, which the transport skips at their place in the stream while it sends the file itself.
/// </summary>
internal sealed class EpollResponseBodyFeature : IHttpResponseBodyFeature
{
    /// <summary>
    /// Placeholder bytes written between two flushes. Each write is one pool block (GetMemory without a size hint): a
    /// larger hint than the pool's block makes the pipe rent a fresh array per write, 1 MiB each, which cost 250 MB for
    /// 300 stalled downloads and stayed on the large-object heap after they left. The loop skips placeholders as soon
    /// as it reads them, so they are held only between a flush and the loop's next read; each flush is a round trip
    /// with the loop: 64 KiB per flush cost keep-alive downloads about a third of their speed (1,000-1,300 against
    /// 1,200-2,100 MiB/s here), 128 KiB about a tenth, within this machine's noise; 256 KiB let 40 stalled responses
    /// grow the pool by 276 KiB each (128 KiB: 114-135 KiB, PlaceholderMemoryTests).
    /// </summary>
    private const int PlaceholderBytesPerFlush = 128 * 1024;

    private readonly HttpContext _context;
    private readonly IHttpResponseBodyFeature _inner;
    private readonly EpollConnection _connection;

    private EpollResponseBodyFeature(HttpContext context, IHttpResponseBodyFeature inner, EpollConnection connection)
    {
        _context = context;
        _inner = inner;
        _connection = connection;
    }

    /// <summary>
    /// The feature for this request. An HTTP/1.x connection keeps one HttpContext and one Kestrel body feature for all
    /// its requests, one after another, and this feature holds nothing else: the connection's last one is reused
    /// instead of allocating one per request. HTTP/2 streams differ in both and get their own.
    /// </summary>
    public static EpollResponseBodyFeature For(HttpContext context, IHttpResponseBodyFeature inner, EpollConnection connection)
    {
        if (connection.LastResponseBodyFeature is { } last && ReferenceEquals(last._context, context) && ReferenceEquals(last._inner, inner))
        {
            return last;
        }

        var feature = new EpollResponseBodyFeature(context, inner, connection);
        connection.LastResponseBodyFeature = feature;
        return feature;
    }

    public IHttpResponseBodyFeature Inner => _inner;

    public Stream Stream => _inner.Stream;

    public PipeWriter Writer => _inner.Writer;

    public void DisableBuffering() => _inner.DisableBuffering();

    public Task StartAsync(CancellationToken cancellationToken = default) => _inner.StartAsync(cancellationToken);

    public Task CompleteAsync() => _inner.CompleteAsync();

    public async Task SendFileAsync(string path, long offset, long? count, CancellationToken cancellationToken = default)
    {
        if (!CanBypassKestrel())
        {
            await _inner.SendFileAsync(path, offset, count, cancellationToken).ConfigureAwait(false);
            return;
        }

        using SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        long size = SendFileFeatureExtensions.RangeSize(file, offset, count);

        HttpResponse response = _context.Response;
        if (!EpollConnection.IsRegularFile(file) || !CanFrameWithContentLength(response, size))
        {
            await _inner.SendFileAsync(path, offset, count, cancellationToken).ConfigureAwait(false);
            return;
        }

        cancellationToken.ThrowIfCancellationRequested();
        await _inner.StartAsync(cancellationToken).ConfigureAwait(false);
        if (size == 0)
        {
            return;
        }

        // The headers (and any body written before) go into the transport's pipe ahead of the file.
        PipeWriter writer = _inner.Writer;
        await writer.FlushAsync(cancellationToken).ConfigureAwait(false);

        var job = new SendFileJob(file, offset, size, placeholders: size);
        Task<SendFileOutcome> sending = _connection.RunFileJobAsync(job, cancellationToken);

        // Placeholders only once the kernel took the file: if it refuses it (EINVAL), the job ends with nothing
        // sent or skipped and Kestrel copies the file as it would have.
        SendFileOutcome accepted;
        try
        {
            accepted = await job.Accepted.Task.ConfigureAwait(false);
        }
        catch
        {
            // The job failed or was cancelled before the kernel took a byte: its task carries the same error.
            await sending.ConfigureAwait(false);
            throw;
        }

        if (accepted == SendFileOutcome.NotSupported)
        {
            await sending.ConfigureAwait(false);
            await _inner.SendFileAsync(path, offset, count, cancellationToken).ConfigureAwait(false);
            return;
        }

        try
        {
            await WritePlaceholdersAsync(writer, size, sending, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // Kestrel refused a placeholder (more bytes than the Content-Length, the request aborted): the job would
            // wait for the rest forever, and the file must not be disposed while the loop still sends from it. End
            // the job (part of the body is out: the connection is aborted) and wait for the loop to let go of it.
            _connection.CancelFileJob(job);
            try
            {
                await sending.ConfigureAwait(false);
            }
            catch (Exception)
            {
                // It ends as cancelled, or with the close that came first; the placeholder's error is the one to report.
            }

            throw;
        }

        await sending.ConfigureAwait(false);
    }

    /// <summary>
    /// The fast path needs the bytes to reach the socket unchanged, exactly as Kestrel would frame them: plain
    /// HTTP/1.x, not HEAD (Kestrel drops the body), the server's own body feature (no compression or other wrapper
    /// in front), and the transport's own pipe (no TLS or connection logging).
    /// </summary>
    private bool CanBypassKestrel()
    {
        HttpRequest request = _context.Request;
        return _connection.IsSendFileAvailable
            && !HttpMethods.IsHead(request.Method)
            && (HttpProtocol.IsHttp11(request.Protocol) || HttpProtocol.IsHttp10(request.Protocol))
            && !request.IsHttps
            && _context.Features.Get<ITlsHandshakeFeature>() is null
            && ReferenceEquals(_inner, _context.Features.Get<IHttpRequestFeature>());
    }

    /// <summary>Placeholders need Content-Length framing (with chunked framing Kestrel would wrap them in chunk headers).</summary>
    private static bool CanFrameWithContentLength(HttpResponse response, long size)
    {
        if (response.Headers.TransferEncoding.Count > 0)
        {
            return false;
        }

        if (response.HasStarted)
        {
            return response.ContentLength is not null;
        }

        response.ContentLength ??= size;
        return true;
    }

    private static async Task WritePlaceholdersAsync(PipeWriter writer, long size, Task sending, CancellationToken cancellationToken)
    {
        long left = size;
        while (left > 0)
        {
            long flushAt = left - Math.Min(left, PlaceholderBytesPerFlush);
            while (left > flushAt)
            {
                Memory<byte> memory = writer.GetMemory();
                int n = (int)Math.Min(memory.Length, left - flushAt);

                // Never sent, but zeroed: pool memory may hold another connection's bytes, and a bug must not leak them.
                memory.Span[..n].Clear();
                writer.Advance(n);
                left -= n;
            }

            FlushResult flush = await writer.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (flush.IsCompleted || sending.IsCompleted)
            {
                // The connection went away or the file failed: the job's task says why. (A flush cancelled by
                // CancelPendingFlush just goes on: the job needs every placeholder to finish.)
                return;
            }
        }
    }
}

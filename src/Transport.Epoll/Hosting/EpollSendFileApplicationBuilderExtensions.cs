using Microsoft.AspNetCore.Http.Features;
using Transport.Epoll;
using Transport.Epoll.Http;
using Transport.Epoll.Internal;

namespace Microsoft.AspNetCore.Builder;

/// <summary>Turns on the sendfile fast path for HTTP responses.</summary>
public static class EpollSendFileApplicationBuilderExtensions
{
    /// <summary>
    /// Sends files of HTTP/1.x responses (<c>Results.File</c> with a path, the static files middleware,
    /// <c>Response.SendFileAsync</c>) with <c>sendfile(2)</c> on connections of the epoll transport. Put it before
    /// the middleware that sends files, and after response compression if you use it (a compressed response then
    /// copies, as it must). Where the bytes must pass through Kestrel (TLS, HTTP/2 and 3, HEAD, compression, a
    /// replaced connection pipe, chunked framing) Kestrel's own copy is used, with identical bytes. A no-op on other
    /// transports.
    /// </summary>
    public static IApplicationBuilder UseEpollSendFile(this IApplicationBuilder app)
    {
        ArgumentNullException.ThrowIfNull(app);
        return app.Use(static next => context =>
        {
            if (context.Features.Get<IConnectionSendFileFeature>() is not EpollConnection connection
                || context.Features.Get<IHttpResponseBodyFeature>() is not { } inner)
            {
                return next(context);
            }

            context.Features.Set<IHttpResponseBodyFeature>(EpollResponseBodyFeature.For(context, inner, connection));
            return next(context);
        });
    }
}

namespace WebApp;

/// <summary>
/// Once the sample is stopping (ApplicationStopping), every HTTP/1.x response carries <c>Connection: close</c>, so a
/// keep-alive client (a load balancer's pooled connection) learns on its next response that this connection ends,
/// and the server closes it only after that response. Without it, Kestrel's stop closes each idle keep-alive
/// connection at once, and a client that sent its next request at that moment gets no answer: the keep-alive race of
/// RFC 9112 9.3.1, which a client may or may not retry. With <c>--DrainDelay</c> the busy connections are closed this
/// way during the delay, before Kestrel's stop finds them. HTTP/2 has no such header (RFC 9113 8.2.2); Kestrel's stop
/// sends GOAWAY instead.
/// </summary>
internal static class Draining
{
    public static RequestDelegate CloseWhenStopping(RequestDelegate next, CancellationToken stopping)
        => context =>
        {
            if (stopping.IsCancellationRequested && (HttpProtocol.IsHttp11(context.Request.Protocol) || HttpProtocol.IsHttp10(context.Request.Protocol)))
            {
                context.Response.Headers.Connection = "close";
            }

            return next(context);
        };
}

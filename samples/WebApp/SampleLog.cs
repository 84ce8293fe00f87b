namespace WebApp;

/// <summary>The sample's own log messages, with stable event ids (category <c>WebApp</c>).</summary>
internal static partial class SampleLog
{
    [LoggerMessage(1000, LogLevel.Warning, "GET /slow?ms={Milliseconds} did not complete: aborted after {ElapsedMs} ms (the client left, or the server's shutdown timeout passed).")]
    public static partial void SlowRequestAborted(ILogger logger, int milliseconds, long elapsedMs);
}

using System.Net;
using System.Net.Security;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>HttpClients for the tests: bounded timeouts, the test certificate trusted, nothing else.</summary>
public static class HttpClients
{
    public static SocketsHttpHandler Handler(int maxConnectionsPerServer = int.MaxValue) => new()
    {
        ConnectTimeout = Timeouts.Default,
        MaxConnectionsPerServer = maxConnectionsPerServer,
        UseProxy = false,
        SslOptions = new SslClientAuthenticationOptions
        {
            // Trusts exactly the certificate the tests made, nothing else.
            RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                certificate is not null && certificate.GetCertHashString() == TestCertificate.Instance.Thumbprint,
        },
    };

    public static HttpClient Create(Uri baseAddress, Version? version = null, int maxConnectionsPerServer = int.MaxValue) =>
        new(Handler(maxConnectionsPerServer))
        {
            BaseAddress = baseAddress,
            Timeout = Timeouts.Bulk,
            DefaultRequestVersion = version ?? HttpVersion.Version11,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
}

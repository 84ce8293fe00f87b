using System.Reflection;
using Xunit.Sdk;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>The names of the two transports a test can run against.</summary>
public static class Transports
{
    /// <summary>This project's transport.</summary>
    public const string Epoll = "epoll";

    /// <summary>Kestrel's default transport: the control that proves a shared test is right.</summary>
    public const string Sockets = "sockets";

    public static bool IsEpoll(string transport) => transport switch
    {
        Epoll => true,
        Sockets => false,
        _ => throw new ArgumentOutOfRangeException(nameof(transport), transport, "Unknown transport."),
    };
}

/// <summary>Supplies <c>"epoll"</c> and <c>"sockets"</c> to a <see cref="TheoryAttribute"/> whose only parameter is the transport.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class BothTransportsAttribute : DataAttribute
{
    public override IEnumerable<object[]> GetData(MethodInfo testMethod)
    {
        yield return [Transports.Epoll];
        yield return [Transports.Sockets];
    }
}

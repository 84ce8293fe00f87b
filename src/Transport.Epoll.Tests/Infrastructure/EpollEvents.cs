using System.Reflection;
using Microsoft.Extensions.Logging;
using Transport.Epoll.Internal;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>The transport's log events as <see cref="EpollLog"/> declares them, so tests name an event by its method rather than copy its number.</summary>
public static class EpollEvents
{
    /// <summary>Every <c>[LoggerMessage]</c> method of <see cref="EpollLog"/>: its name, event id and level.</summary>
    public static IReadOnlyList<(string Name, int Id, LogLevel Level)> All { get; } =
        [.. typeof(EpollLog).GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)
            .Select(m => (m.Name, Attribute: m.GetCustomAttribute<LoggerMessageAttribute>()))
            .Where(m => m.Attribute is not null)
            .Select(m => (m.Name, m.Attribute!.EventId, m.Attribute.Level))];

    /// <summary>The event id of <see cref="EpollLog"/>'s method <paramref name="name"/> (pass <c>nameof(EpollLog.X)</c>).</summary>
    public static int Id(string name) => All.Single(e => e.Name == name).Id;
}

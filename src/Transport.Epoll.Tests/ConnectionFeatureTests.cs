using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// The connection answers its own features itself, and a feature someone else sets on it wins over its own, as with
/// any feature collection: Kestrel and connection middleware may replace one.
/// </summary>
public sealed class ConnectionFeatureTests(ITestOutputHelper output)
{
    private sealed class ReplacedId(string id) : IConnectionIdFeature
    {
        public string ConnectionId { get; set; } = id;
    }

    [Fact]
    public async Task Own_features_are_the_connection_until_replaced_and_again_after_the_replacement_is_removed()
    {
        var seen = new TaskCompletionSource<List<string>>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, connection =>
        {
            IFeatureCollection features = connection.Features;
            var facts = new List<string>
            {
                $"id={features.Get<IConnectionIdFeature>()?.ConnectionId == connection.ConnectionId}",
                $"sendfile={features.Get<IConnectionSendFileFeature>() is not null}",
                $"epoll={features.Get<IEpollConnectionFeature>() is not null}",
                $"tls={features.Get<ITlsConnectionFeature>() is null}",
            };

            int revision = features.Revision;
            var replacement = new ReplacedId("replaced");
            features.Set<IConnectionIdFeature>(replacement);
            facts.Add($"replaced={ReferenceEquals(features.Get<IConnectionIdFeature>(), replacement)}");
            facts.Add($"indexer={ReferenceEquals(features[typeof(IConnectionIdFeature)], replacement)}");
            facts.Add($"others={features.Get<IConnectionSendFileFeature>() is not null}");
            facts.Add($"revision={features.Revision > revision}");
            facts.Add($"listed={features.Count(f => f.Key == typeof(IConnectionIdFeature))}");

            features.Set<IConnectionIdFeature>(null);
            facts.Add($"restored={features.Get<IConnectionIdFeature>()?.ConnectionId == connection.ConnectionId}");
            seen.TrySetResult(facts);
            return Task.CompletedTask;
        }, output: output);

        using var socket = await Client.ConnectAsync(server.EndPoint);
        List<string> facts = await seen.Task.WithTimeout();
        Assert.Equal(
            ["id=True", "sendfile=True", "epoll=True", "tls=True", "replaced=True", "indexer=True", "others=True", "revision=True", "listed=1", "restored=True"],
            facts);
    }
}

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// Tests that count process-wide things (open fds, epoll- threads) or that load the machine (thousands of
/// connections). xunit runs this collection alone, after the parallel ones, so other tests cannot disturb the counts.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialCollection
{
    public const string Name = "Serial: process-wide counts and heavy load";
}

using System.Globalization;
using System.Text.RegularExpressions;
using Transport.Epoll.Internal;
using Transport.Epoll.Tests.Infrastructure;

namespace Transport.Epoll.Tests;

/// <summary>
/// EpollLog's event ids agree with what its source says of them: the class comment names the ranges, a heading per
/// range groups the events, and an id is stable, so log queries filter on it. The ids come from the compiled
/// attributes (what a log sink sees); which heading an event stands under comes from the source.
/// </summary>
public sealed partial class EpollLogTests
{
    private static readonly string Source = File.ReadAllText(Path.Combine(Repository.Root, "src", "Transport.Epoll", "Internal", "EpollLog.cs"));

    [Fact]
    public void No_two_events_share_an_id()
    {
        Assert.NotEmpty(EpollEvents.All);
        var shared = EpollEvents.All.GroupBy(e => e.Id).Where(g => g.Count() > 1).Select(g => $"{g.Key}: {string.Join(", ", g.Select(e => e.Name))}").ToList();
        Assert.True(shared.Count == 0, "Events that share an id: " + string.Join("; ", shared));
    }

    [Fact]
    public void Every_event_id_lies_in_the_range_of_its_heading_and_the_headings_are_the_documented_ranges()
    {
        var headings = Heading().Matches(Source).Select(m => (Index: m.Index, From: int.Parse(m.Groups["from"].Value, CultureInfo.InvariantCulture), To: int.Parse(m.Groups["to"].Value, CultureInfo.InvariantCulture), m.Groups["what"].Value)).ToList();
        Assert.NotEmpty(headings);

        // The class comment names the same ranges, in the same order, as the headings.
        string summary = Source[..Source.IndexOf("internal static partial class EpollLog", StringComparison.Ordinal)];
        var documented = DocumentedRange().Matches(summary).Select(m => (int.Parse(m.Groups["from"].Value, CultureInfo.InvariantCulture), int.Parse(m.Groups["to"].Value, CultureInfo.InvariantCulture))).ToList();
        Assert.Equal(headings.Select(h => (h.From, h.To)), documented);

        var misplaced = new List<string>();
        foreach (var (name, id, _) in EpollEvents.All)
        {
            int declared = Source.IndexOf($" {name}(ILogger ", StringComparison.Ordinal);
            Assert.True(declared >= 0, $"EpollLog.{name} not found in EpollLog.cs.");
            var heading = headings.LastOrDefault(h => h.Index < declared);
            if (heading == default)
            {
                misplaced.Add($"{name} ({id}) stands under no range heading");
            }
            else if (id < heading.From || id > heading.To)
            {
                misplaced.Add($"{name} ({id}) stands under \"{heading.From}-{heading.To}: {heading.Value}\"");
            }
        }

        Assert.True(misplaced.Count == 0, "Events outside their range: " + string.Join("; ", misplaced));
    }

    /// <summary>A range heading inside the class: "// 100-199: listeners and accept."</summary>
    [GeneratedRegex(@"^    // (?<from>\d+)-(?<to>\d+): (?<what>[^\n]+)$", RegexOptions.Multiline)]
    private static partial Regex Heading();

    /// <summary>A range in the class comment: "1-99 event loops".</summary>
    [GeneratedRegex(@"(?<from>\d+)-(?<to>\d+) [a-z]")]
    private static partial Regex DocumentedRange();
}

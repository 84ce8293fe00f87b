using System.Diagnostics;
using System.IO.Compression;
using System.Reflection.Metadata;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Packaging;

/// <summary>
/// The library as a user gets it: <c>dotnet pack</c>, then a new app that knows the package and nothing else of the
/// repository (a folder feed, no project reference) builds and serves a request on the epoll transport. Serial: the
/// build takes both cores for a while, and timing-sensitive tests should not share the machine with it.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed partial class PackageTests(ITestOutputHelper output)
{
    private static readonly TimeSpan PackTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromSeconds(120);

    /// <summary>The SourceLink record of a portable PDB (its kind in the CustomDebugInformation table).</summary>
    private static readonly Guid SourceLinkKind = new("CC110556-A091-4D38-9FEC-25AB9A351A6A");

    [Fact]
    public async Task PackedPackageServesPlaintextOnEpollInAnAppThatOnlyKnowsThePackage()
    {
        string repository = Repository.Root;
        string work = Directory.CreateTempSubdirectory("epoll-package-").FullName;
        try
        {
            var clock = Stopwatch.StartNew();
            string feed = Path.Combine(work, "feed");
            string version = await PackAsync(repository, feed);
            output.WriteLine($"packed {version} in {clock.Elapsed.TotalSeconds:0.0} s");

            string app = WriteConsumerApp(work, feed, version);
            var (exitCode, buildOutput) = await DotnetCli.RunAsync(app, BuildTimeout, "build", "-c", "Release", "--disable-build-servers");
            Assert.True(exitCode == 0, "the app built from the package alone did not build:\n" + buildOutput);
            Assert.DoesNotMatch(@": warning [A-Z]+[0-9]+", buildOutput);
            AssertRestoredFromPackage(app, version);
            output.WriteLine($"built the app in {clock.Elapsed.TotalSeconds:0.0} s");

            await using var server = ChildProcess.Start(ConsumerStartInfo(Path.Combine(app, "bin", "Release", "net10.0", "Consumer.dll")), output, "[app] ");
            var listening = ListeningLine().Match(await server.WaitForStartLineAsync(ListeningLine().IsMatch, "The app"));
            var baseAddress = new Uri(listening.Groups["url"].Value + "/");
            using var client = HttpClients.Create(baseAddress);
            using var plaintext = await client.GetAsync(new Uri("/plaintext", UriKind.Relative)).WithTimeout();
            Assert.Equal("Hello, World!", await plaintext.Content.ReadAsStringAsync());
            Assert.Equal("text/plain", plaintext.Content.Headers.ContentType?.MediaType);

            // The app asks the request's features for IEpollConnectionFeature: present only when the connection came
            // through this transport, so a silent fall back to Kestrel's Sockets transport fails here.
            string transport = await client.GetStringAsync(new Uri("/transport", UriKind.Relative)).WithTimeout();
            Assert.Matches("^epoll id=[0-9A-F]+ loop=[0-9]+ meter=Transport.Epoll$", transport);
            output.WriteLine($"{transport}; whole test {clock.Elapsed.TotalSeconds:0.0} s");
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>
    /// Packs the library as it was built for these tests (same configuration, no rebuild) into <paramref name="feed"/>,
    /// checks what a package user relies on, and returns the package's version.
    /// </summary>
    private async Task<string> PackAsync(string repository, string feed)
    {
        string project = Path.Combine(repository, "src", "Transport.Epoll", "Transport.Epoll.csproj");
        var (exitCode, packOutput) = await DotnetCli.RunAsync(repository, PackTimeout, "pack", project, "-c", Repository.Configuration, "--no-build", "-o", feed);
        Assert.True(exitCode == 0, "dotnet pack failed:\n" + packOutput);

        string nupkg = Assert.Single(Directory.GetFiles(feed, "Transport.Epoll.*.nupkg"));
        string snupkg = Assert.Single(Directory.GetFiles(feed, "Transport.Epoll.*.snupkg"));

        string version;
        string repositoryPath;
        using (var package = ZipFile.OpenRead(nupkg))
        {
            string[] names = [.. package.Entries.Select(e => e.FullName)];
            Assert.Contains("README.md", names);
            Assert.Contains("LICENSE", names);
            Assert.Contains("lib/net10.0/Transport.Epoll.dll", names);
            Assert.Contains("lib/net10.0/Transport.Epoll.xml", names);

            var metadata = ReadNuspec(package).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
            XElement Element(string name) => metadata.Elements().Single(e => e.Name.LocalName == name);
            version = Element("version").Value;
            Assert.Equal("Transport.Epoll", Element("id").Value);
            Assert.Equal("expression", Element("license").Attribute("type")?.Value);
            Assert.Equal("MIT", Element("license").Value);
            Assert.Equal("README.md", Element("readme").Value);
            var repositoryElement = Element("repository");
            string repositoryUrl = repositoryElement.Attribute("url")?.Value ?? "";
            Assert.StartsWith("https://", repositoryUrl, StringComparison.Ordinal);
            repositoryPath = new Uri(repositoryUrl).AbsolutePath.TrimEnd('/');
            repositoryPath = repositoryPath.EndsWith(".git", StringComparison.Ordinal) ? repositoryPath[..^4] : repositoryPath;
            Assert.Matches("^[0-9a-f]{40}$", repositoryElement.Attribute("commit")?.Value);

            string readme = new StreamReader(package.GetEntry("README.md")!.Open(), Encoding.UTF8).ReadToEnd();
            Assert.Equal(File.ReadAllText(Path.Combine(repository, "README.md")), readme);

            // The file carries the copyright notice the expression's licence asks for, and is the repository's.
            string license = new StreamReader(package.GetEntry("LICENSE")!.Open(), Encoding.UTF8).ReadToEnd();
            Assert.Equal(File.ReadAllText(Path.Combine(repository, "LICENSE")), license);
            Assert.StartsWith("MIT License", license, StringComparison.Ordinal);
            Assert.Contains("Copyright (c)", license, StringComparison.Ordinal);
        }

        using (var symbols = ZipFile.OpenRead(snupkg))
        {
            // SourceLink: the PDB maps the sources to URLs of the package's repository at a commit. (The commit is the
            // one the library was built at, which a local commit after the build makes older than the nuspec's.)
            string sourceLink = ReadSourceLink(symbols.GetEntry("lib/net10.0/Transport.Epoll.pdb")!);
            output.WriteLine("SourceLink: " + sourceLink);
            string pattern = """^\{"documents":\{"[^"]+\*":"https://[^"]+""" + Regex.Escape(repositoryPath) + """/[0-9a-f]{40}/\*"\}\}$""";
            Assert.Matches(pattern, sourceLink);
        }

        return version;
    }

    private static XDocument ReadNuspec(ZipArchive package)
    {
        var entry = package.Entries.Single(e => e.FullName == "Transport.Epoll.nuspec");
        using var stream = entry.Open();
        return XDocument.Load(stream);
    }

    private static string ReadSourceLink(ZipArchiveEntry pdbEntry)
    {
        using var pdb = new MemoryStream();
        using (var stream = pdbEntry.Open())
        {
            stream.CopyTo(pdb);
        }

        pdb.Position = 0;
        using var provider = MetadataReaderProvider.FromPortablePdbStream(pdb);
        var reader = provider.GetMetadataReader();
        foreach (var handle in reader.CustomDebugInformation)
        {
            var information = reader.GetCustomDebugInformation(handle);
            if (reader.GetGuid(information.Kind) == SourceLinkKind)
            {
                return Encoding.UTF8.GetString(reader.GetBlobBytes(information.Value));
            }
        }

        throw new Xunit.Sdk.XunitException("The package's PDB has no SourceLink record.");
    }

    /// <summary>
    /// A minimal web app outside the repository (so none of its Directory.Build.props, package versions or sources
    /// apply) whose only source of packages is the folder feed, with a packages folder of its own: no network, no
    /// stale copy of the package from an earlier run. Nothing else is needed: ASP.NET Core comes with the SDK as a
    /// framework reference, and the package depends on nothing but that framework.
    /// </summary>
    private static string WriteConsumerApp(string work, string feed, string version)
    {
        string app = Path.Combine(work, "app");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "NuGet.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <config>
                <add key="globalPackagesFolder" value="{Path.Combine(work, "packages")}" />
              </config>
              <packageSources>
                <clear />
                <add key="local" value="{feed}" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk.Web">
              <PropertyGroup>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Transport.Epoll" Version="[{version}]" />
              </ItemGroup>
            </Project>
            """);

        // What the README tells a user to write, plus an endpoint that says which transport carried the request.
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using Transport.Epoll;

            var builder = WebApplication.CreateSlimBuilder(args);
            if (EpollTransport.IsSupported)
            {
                builder.WebHost.UseEpollTransport();
            }

            var app = builder.Build();
            app.MapGet("/plaintext", () => "Hello, World!");
            app.MapGet("/transport", (HttpContext context) =>
                context.Features.Get<IEpollConnectionFeature>() is { } epoll
                    ? $"epoll id={epoll.Id:X} loop={epoll.LoopIndex} meter={EpollTransport.MeterName}"
                    : "not epoll");

            await app.StartAsync();
            Console.WriteLine("Consumer: listening on " + string.Join(' ', app.Urls));
            await app.WaitForShutdownAsync();
            """);
        return app;
    }

    /// <summary>The restore resolved Transport.Epoll as a package of that version, not as a project.</summary>
    private static void AssertRestoredFromPackage(string app, string version)
    {
        string assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"));
        Assert.Matches(new Regex($"\"Transport\\.Epoll/{Regex.Escape(version)}\": \\{{\\s*\"type\": \"package\"", RegexOptions.IgnoreCase), assets);
        Assert.DoesNotContain("\"type\": \"project\"", assets, StringComparison.Ordinal);
    }

    /// <summary>The built app on 127.0.0.1, on a port the kernel picks; it prints the address it listens on.</summary>
    private static ProcessStartInfo ConsumerStartInfo(string dll)
    {
        var psi = DotnetCli.StartInfo(Path.GetDirectoryName(dll)!, dll, "--urls", "http://127.0.0.1:0");
        psi.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        psi.Environment["Logging__LogLevel__Default"] = "Warning";
        return psi;
    }

    [GeneratedRegex(@"^Consumer: listening on (?<url>http://127\.0\.0\.1:\d+)")]
    private static partial Regex ListeningLine();
}

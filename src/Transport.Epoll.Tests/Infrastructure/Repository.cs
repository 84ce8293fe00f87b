using System.Reflection;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>Where the tests run from: the repository around them and the build they are part of.</summary>
public static class Repository
{
    /// <summary>The folder with EpollTransport.sln, found upward from the test's binaries.</summary>
    public static string Root => FindRoot();

    /// <summary>The configuration the tests were built in (Debug, Release): the sample and the library were built in it too.</summary>
    public static string Configuration { get; } =
        typeof(Repository).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";

    /// <summary>The target framework folder of the test's binaries (net10.0).</summary>
    public static string Framework { get; } = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Name;

    /// <summary>
    /// samples/WebApp/bin/&lt;configuration&gt;/&lt;framework&gt;/WebApp.dll: the test project's ProjectReference to the
    /// sample (without the assembly) builds it in the tests' configuration.
    /// </summary>
    public static string SampleDll
    {
        get
        {
            string dll = Path.Combine(Root, "samples", "WebApp", "bin", Configuration, Framework, "WebApp.dll");
            return File.Exists(dll)
                ? dll
                : throw new FileNotFoundException(
                    $"{dll} not found: the test project's ProjectReference to samples/WebApp builds it; build the tests (or the solution) in that configuration.");
        }
    }

    /// <summary>samples/EchoClient/bin/&lt;configuration&gt;/&lt;framework&gt;/EchoClient.dll, built like <see cref="SampleDll"/>.</summary>
    public static string EchoClientDll
    {
        get
        {
            string dll = Path.Combine(Root, "samples", "EchoClient", "bin", Configuration, Framework, "EchoClient.dll");
            return File.Exists(dll)
                ? dll
                : throw new FileNotFoundException($"{dll} not found: the test project's ProjectReference to samples/EchoClient builds it.");
        }
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "EpollTransport.sln")))
            {
                return dir.FullName;
            }
        }

        throw new DirectoryNotFoundException($"EpollTransport.sln not found above {AppContext.BaseDirectory}.");
    }
}

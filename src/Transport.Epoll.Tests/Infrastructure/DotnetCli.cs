using System.Diagnostics;

namespace Transport.Epoll.Tests.Infrastructure;

/// <summary>
/// Runs the <c>dotnet</c> command line (pack, build, an app's dll) as a child process with a deadline, for tests that
/// exercise the repository the way a user would. The child gets the test's environment minus the MSBuild variables
/// <c>dotnet test</c> sets for its own build, and no build servers, so nothing lingers after the test.
/// </summary>
public static class DotnetCli
{
    /// <summary>The dotnet host that runs the tests (the SDK sets DOTNET_HOST_PATH), else the one next to the runtime, else PATH's.</summary>
    public static string Host
    {
        get
        {
            if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host))
            {
                return host;
            }

            // .../dotnet/shared/Microsoft.NETCore.App/<version>/ -> .../dotnet/dotnet
            string runtime = System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory();
            string candidate = Path.GetFullPath(Path.Combine(runtime, "..", "..", "..", "dotnet"));
            return File.Exists(candidate) ? candidate : "dotnet";
        }
    }

    /// <summary>
    /// Runs <c>dotnet ARGS</c> in <paramref name="workingDirectory"/> and waits for it; kills the process tree and throws
    /// <see cref="TimeoutException"/> (with the output so far) when it outlives <paramref name="timeout"/>. Returns the
    /// exit code and everything it printed (stdout and stderr, interleaved by line).
    /// </summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(string workingDirectory, TimeSpan timeout, params string[] args)
    {
        await using var process = ChildProcess.Start(StartInfo(workingDirectory, args));
        int exitCode = await process.WaitForExitAsync(timeout, $"dotnet {string.Join(' ', args)}");
        return (exitCode, string.Join('\n', process.Lines));
    }

    /// <summary>A start info for <c>dotnet ARGS</c> with redirected output and the cleaned environment; for <see cref="ChildProcess"/>.</summary>
    public static ProcessStartInfo StartInfo(string workingDirectory, params string[] args)
    {
        var psi = new ProcessStartInfo
        {
            FileName = Host,
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };

        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        // dotnet test runs inside MSBuild and passes some of its state down (MSBuildExtensionsPath, MSBuildSDKsPath,
        // MSBUILDNOINPROCNODE...); a child build must find its own SDK from its own directory.
        foreach (string name in psi.Environment.Keys.ToArray())
        {
            if (name.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase))
            {
                psi.Environment.Remove(name);
            }
        }

        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        psi.Environment["DOTNET_CLI_UI_LANGUAGE"] = "en";

        // No MSBuild node reuse and no compiler server: both would outlive the test by minutes.
        psi.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        psi.Environment["UseSharedCompilation"] = "false";
        return psi;
    }
}

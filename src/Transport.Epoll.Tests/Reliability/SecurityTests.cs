using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests.Reliability;

/// <summary>
/// No fd leaks into a child process (CLOEXEC), and no SIGPIPE. Serial: the CLOEXEC test holds a non-CLOEXEC socket
/// for a moment (its control), and the SIGPIPE test restores the default disposition of SIGPIPE for the process
/// while it runs, so nothing else may run meanwhile.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class SecurityTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_child_process_inherits_none_of_the_servers_sockets_epoll_or_eventfd_descriptors()
    {
        var serverFds = new ConcurrentQueue<int>();
        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            serverFds.Enqueue(await connection.Features.Get<IEpollConnectionFeature>()!.WithSocketAsync(static fd => fd));
            await Handlers.EchoAsync(connection);
        }, o => o.ThreadCount = 2, output);

        var clients = new List<Socket>();
        int control = -1;
        try
        {
            for (int i = 0; i < 3; i++)
            {
                var socket = await Client.ConnectAsync(server.EndPoint);
                clients.Add(socket);
                await socket.SendAllAsync("ping");
                await socket.ReceiveExactlyAsync(4);
            }

            // What the server holds open right now: its connections, its listening sockets, its loops' epoll and eventfd.
            var connectionTargets = serverFds.Select(fd => ProcessInfo.DescribeFd(fd)).ToList();
            Assert.All(connectionTargets, t => Assert.StartsWith("socket:[", t));
            var listenerTargets = ProcessInfo.ListeningSocketInodes(server.Port).Select(inode => $"socket:[{inode}]").ToList();
            Assert.NotEmpty(listenerTargets);
            var ownTargets = OwnFdTargets();
            Assert.True(ownTargets.Count(t => t == "anon_inode:[eventpoll]") >= 2, "The server's loops have no epoll fd?");
            Assert.True(ownTargets.Count(t => t == "anon_inode:[eventfd]") >= 2, "The server's loops have no eventfd?");

            // The control: a socket made without SOCK_CLOEXEC must show up in the child, or this test could not fail.
            control = Libc.socket(Libc.AF_INET, Libc.SOCK_STREAM, 0);
            Assert.True(control >= 0, $"socket() failed: {Errno.Last}");
            string controlTarget = ProcessInfo.DescribeFd(control)!;

            var inherited = await ChildFdTargetsAsync();
            output.WriteLine("The child's fds: " + string.Join(", ", inherited.Select(p => $"{p.Key} -> {p.Value}")));

            Assert.Contains(controlTarget, inherited.Values);
            var leaked = inherited.Where(p => p.Value != controlTarget && (
                connectionTargets.Contains(p.Value)
                || listenerTargets.Contains(p.Value)
                || p.Value is "anon_inode:[eventpoll]" or "anon_inode:[eventfd]")).ToList();
            Assert.True(leaked.Count == 0, "The child inherited the server's fds: " + string.Join(", ", leaked.Select(p => $"{p.Key} -> {p.Value}")));

            // Stricter: no socket at all but the control (.NET's own sockets are CLOEXEC too).
            var sockets = inherited.Where(p => p.Value.StartsWith("socket:", StringComparison.Ordinal) && p.Value != controlTarget).ToList();
            Assert.True(sockets.Count == 0, "The child inherited sockets: " + string.Join(", ", sockets.Select(p => $"{p.Key} -> {p.Value}")));
        }
        finally
        {
            if (control >= 0)
            {
                _ = Libc.close(control);
            }

            foreach (var socket in clients)
            {
                socket.Dispose();
            }
        }
    }

    [Fact]
    public async Task Writing_to_a_peer_that_closed_and_reset_ends_the_write_without_SIGPIPE_and_the_reason_is_PeerReset()
    {
        // The runtime ignores SIGPIPE, which would hide a send without MSG_NOSIGNAL: restore the default (terminate
        // the process) for the duration, so such a send kills the test host and the run fails.
        nint previous = Native.SetSignalHandler(Native.SIGPIPE, Native.SIG_DFL);
        Assert.NotEqual(-1, previous);
        try
        {
            Assert.False(Native.IsSignalIgnored(Native.SIGPIPE), "SIGPIPE is still ignored: the test could not fail.");
            await WriteToResettingPeersAsync();
        }
        finally
        {
            Native.SetSignalHandler(Native.SIGPIPE, previous);
        }
    }

    private async Task WriteToResettingPeersAsync()
    {
        const int Connections = 12;
        var ends = new ConcurrentDictionary<int, string>();
        var features = new ConcurrentDictionary<int, (IEpollConnectionFeature Feature, TaskCompletionSource Closed)>();
        byte[] chunk = Client.RandomBytes(16 * 1024, seed: 13);
        int next = -1;

        await using var server = await TestServer.StartRawAsync(Transports.Epoll, async connection =>
        {
            int index = Interlocked.Increment(ref next);
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            connection.ConnectionClosed.Register(() => closed.TrySetResult());
            features[index] = (connection.Features.Get<IEpollConnectionFeature>()!, closed);

            // Writes until the transport says the connection is gone: a completed flush or an exception.
            var writer = connection.Transport.Output;
            long writes = 0;
            try
            {
                while (true)
                {
                    writer.Write(chunk);
                    writes++;
                    var flush = await writer.FlushAsync();
                    if (flush.IsCompleted || flush.IsCanceled)
                    {
                        ends[index] = $"flush completed after {writes} writes";
                        return;
                    }
                }
            }
            catch (Exception e)
            {
                ends[index] = $"{e.GetType().Name} after {writes} writes";
            }
            finally
            {
                // Stays until ConnectionClosed fired (see ConnectionClosedTests for what a returned handler risks).
                try
                {
                    await closed.Task.WaitAsync(Timeouts.Default);
                }
                catch (TimeoutException)
                {
                    // The test's own wait reports it.
                }
            }
        }, o => o.AllowHalfOpen = true, output);

        // Three ways a peer goes away while the server writes: FIN then RST (the server's socket gets EPIPE), a RST
        // alone (ECONNRESET), and a close with unread data (the kernel resets).
        await Task.WhenAll(Enumerable.Range(0, Connections).Select(async i =>
        {
            var socket = await Client.ConnectAsync(server.EndPoint, s => s.ReceiveBufferSize = 16 * 1024);
            await socket.ReceiveExactlyAsync(32 * 1024);
            switch (i % 3)
            {
                case 0:
                    socket.Shutdown(SocketShutdown.Send);
                    await socket.ReceiveExactlyAsync(16 * 1024);
                    socket.Reset();
                    break;
                case 1:
                    socket.Reset();
                    break;
                default:
                    socket.Close();
                    break;
            }
        })).WithTimeout();

        Assert.True(await Poll.UntilAsync(() => ends.Count == Connections), $"Only {ends.Count} of {Connections} handlers saw their writes end.");
        foreach (var (index, (feature, closed)) in features)
        {
            await closed.Task.WithTimeout();
            output.WriteLine($"connection {index}: {ends[index]}, {feature.CloseReason}");
            Assert.Equal(EpollCloseReason.PeerReset, feature.CloseReason);
        }

        // Still alive (no SIGPIPE) and still serving.
        using var probe = await Client.ConnectAsync(server.EndPoint);
        Assert.Equal(16 * 1024, (await probe.ReceiveExactlyAsync(16 * 1024)).Length);
    }

    /// <summary>Runs <c>ls -l /proc/self/fd</c> in a child: fd number -> what it is.</summary>
    private static async Task<Dictionary<int, string>> ChildFdTargetsAsync()
    {
        var psi = new ProcessStartInfo("/bin/ls", ["-l", "/proc/self/fd"])
        {
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(psi)!;
        string text = await process.StandardOutput.ReadToEndAsync().WaitAsync(Timeouts.Default);
        await process.WaitForExitAsync().WaitAsync(Timeouts.Default);
        Assert.Equal(0, process.ExitCode);

        var targets = new Dictionary<int, string>();
        foreach (string line in text.Split('\n'))
        {
            int arrow = line.IndexOf(" -> ", StringComparison.Ordinal);
            if (arrow < 0)
            {
                continue;
            }

            string[] left = line[..arrow].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            targets[int.Parse(left[^1], CultureInfo.InvariantCulture)] = line[(arrow + 4)..];
        }

        Assert.True(targets.ContainsKey(1), "Could not read the child's fd list:\n" + text);
        return targets;
    }

    /// <summary>What every fd of this process is.</summary>
    private static List<string> OwnFdTargets() =>
        Directory.GetFiles("/proc/self/fd").Select(f => ProcessInfo.DescribeFd(long.Parse(Path.GetFileName(f), CultureInfo.InvariantCulture))).OfType<string>().ToList();
}

using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Epoll.Interop;
using Transport.Epoll.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Transport.Epoll.Tests;

/// <summary>
/// Listening fds handed over as FileHandleEndPoint (systemd socket activation, Kestrel's ListenHandle). systemd
/// passes them without FD_CLOEXEC (they had to survive its exec of the service); the transport must set it, or
/// every child process the app starts inherits the listening socket and keeps the port alive after the app exits
/// (dotnet/aspnetcore#29189). There is no systemd here: the tests hand the fd over the way it does.
/// </summary>
public sealed class SocketActivationTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_handed_over_fd_is_made_close_on_exec_and_a_child_process_does_not_inherit_it()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(128);
        int fd = checked((int)listener.Handle);
        string inode = SocketInode(Environment.ProcessId, fd);

        // As systemd hands it over: inheritable. (.NET opens its sockets close-on-exec; clear it as systemd's is not.)
        Assert.Equal(0, Libc.fcntl(fd, Libc.F_SETFD, Libc.fcntl(fd, Libc.F_GETFD, 0) & ~Libc.FD_CLOEXEC));
        Assert.Equal(0, Libc.fcntl(fd, Libc.F_GETFD, 0) & Libc.FD_CLOEXEC);

        await using var server = await TestServer.StartAsync(new TestServerOptions
        {
            Transport = Transports.Epoll,
            EndPoints = [new FileHandleEndPoint((ulong)fd, FileHandleType.Tcp)],
            ConnectionHandler = Handlers.EchoAsync,
            Output = output,
        });
        Assert.Equal(Libc.FD_CLOEXEC, Libc.fcntl(fd, Libc.F_GETFD, 0) & Libc.FD_CLOEXEC);

        // A child the app starts now: its fds must not include the listening socket.
        using var child = Process.Start(new ProcessStartInfo("sleep", "30") { UseShellExecute = false })!;
        try
        {
            string[] childFds = Directory.GetFiles($"/proc/{child.Id}/fd").Select(f => new FileInfo(f).LinkTarget ?? "").ToArray();
            output.WriteLine($"listening socket {inode}; child's fds: {string.Join(' ', childFds)}");
            Assert.DoesNotContain(inode, childFds);
        }
        finally
        {
            child.Kill();
            await child.WaitForExitAsync().WithTimeout();
        }

        using var socket = await Client.ConnectAsync(server.IPEndPoint);
        await socket.SendAllAsync("activated");
        Assert.Equal("activated", Encoding.ASCII.GetString(await socket.ReceiveExactlyAsync(9)));
    }

    /// <summary>
    /// The sample started as systemd starts a socket-activated service: the listening socket as fd 3, LISTEN_FDS=1
    /// and LISTEN_PID set to its own pid (bash sets both and execs, keeping its pid). It serves HTTP on that fd.
    /// </summary>
    [Fact]
    public async Task The_sample_serves_on_the_fd_systemd_style_activation_passes_it()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(128);
        int fd = checked((int)listener.Handle);
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;

        // Inheritable only while the child is spawned (other tests may start processes meanwhile; they get a copy
        // of a listening socket for as long as they live, which harms nothing but is undone at once).
        Assert.Equal(0, Libc.fcntl(fd, Libc.F_SETFD, 0));
        SampleProcess sample;
        try
        {
            sample = await SampleProcess.StartAsync(output: output, wrap: psi =>
            {
                psi.ArgumentList.Insert(0, psi.FileName);
                psi.ArgumentList.Insert(0, "bash");
                psi.ArgumentList.Insert(0, $"exec 3<&{fd} {fd}<&-; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$@\"");
                psi.ArgumentList.Insert(0, "-c");
                psi.FileName = "/bin/bash"; // dash takes single-digit fds only in redirections
            });
        }
        finally
        {
            Libc.fcntl(fd, Libc.F_SETFD, Libc.FD_CLOEXEC);
        }

        await using (sample)
        {
            Assert.Equal(port, sample.HttpPort);
            using var client = HttpClients.Create(sample.BaseAddress);
            Assert.Equal("Hello, World!", await client.GetStringAsync("/plaintext").WithTimeout());

            // The sample holds the socket as fd 3, close-on-exec: "FD_CLOEXEC" shows as flags with 02000000 set.
            string fdinfo = File.ReadAllText($"/proc/{sample.Pid}/fdinfo/3");
            string flags = fdinfo.Split('\n').First(l => l.StartsWith("flags:", StringComparison.Ordinal))[6..].Trim();
            output.WriteLine($"fd 3 flags {flags}");
            Assert.NotEqual(0, Convert.ToInt32(flags, 8) & 0x80000); // O_CLOEXEC
            Assert.Equal(SocketInode(Environment.ProcessId, fd), SocketInode(sample.Pid, 3));
        }
    }

    private static string SocketInode(int pid, int fd)
    {
        string target = new FileInfo($"/proc/{pid}/fd/{fd}").LinkTarget ?? "";
        Assert.StartsWith("socket:[", target);
        return target;
    }
}

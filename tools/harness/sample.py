"""Servers under test: the sample (samples/WebApp, JIT or Native AOT) and, for the load runner, any other program
that answers GET /plaintext. Each runs in its own process group (procs.spawn), its output in a log file."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import socket
import subprocess
import time
from pathlib import Path

from . import HOST, logs, procfs, procs

PLAINTEXT = b"Hello, World!"
# The sample's one start-up line (Program.cs), printed once Kestrel listens: ports as bound, so port 0 shows its
# real port. echo, h2c, files and chat are "off" when not listening (chat is absent from builds before it existed).
_STARTED = re.compile(r"^WebApp: transport=(?P<transport>\S+) http=(?P<http>.+?) echo=(?P<echo>\S+) "
                      r"h2c=(?P<h2c>\S+) files=(?P<files>\S+)(?: chat=(?P<chat>\S+))?", re.M)


class ServerFailure(RuntimeError):
    """The server exited, or did not answer, before it was ready."""


def free_port() -> int:
    """A loopback port nobody listens on right now (for programs that cannot be given port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5.0, host: str = HOST) -> tuple:
    """GET path on a fresh connection; (status, body). Raises OSError / http.client.HTTPException."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_ok(port: int, timeout: float = 1.0, proxy_header: bool = False) -> bool:
    """GET /plaintext answers 200 "Hello, World!". With proxy_header, the request follows a PROXY protocol v1 header
    (for a server started with --ProxyProtocol true, which refuses anything else)."""
    if proxy_header:
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as s:
                s.sendall(f"PROXY TCP4 127.0.0.1 127.0.0.1 1 {port}\r\nGET /plaintext HTTP/1.1\r\nHost: {HOST}\r\n"
                          f"Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.startswith(b"HTTP/1.1 200") and data.endswith(PLAINTEXT)
        except OSError:
            return False
    try:
        status, body = http_get(port, "/plaintext", timeout)
        return status == 200 and body == PLAINTEXT
    except (OSError, http.client.HTTPException):
        return False


def get_json(url: str, timeout: float = 10.0) -> dict:
    """GET http://host:port/path, the body as JSON; raises RuntimeError on a status other than 200."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    status, body = http_get(int(m.group(2)), m.group(3), timeout, host=m.group(1))
    if status != 200:
        raise RuntimeError(f"GET {url}: {status}")
    return json.loads(body)


def stats_counters(port: int, timeout: float = 5.0) -> dict:
    """The transport's counters from the sample's GET /stats ({} on Sockets, or when it does not answer)."""
    try:
        return get_json(f"http://{HOST}:{port}/stats", timeout).get("counters", {})
    except (OSError, http.client.HTTPException, ValueError, RuntimeError):
        return {}


def figures(pid: int, url: str) -> dict:
    """The figures the soak and flood checks compare: /proc and /stats together."""
    p = procfs.proc_figures(pid)
    s = get_json(url + "/stats")
    c = s.get("counters", {})
    targets = procfs.fd_targets(pid)
    return {
        "fd_targets": targets,
        # Sockets, pipes, epoll/eventfd: what a connection leak would show. The rest are files the runtime opens
        # once, lazily (an assembly or a .pdb the first time an exception's stack trace is printed).
        "io_fds": sum(n for t, n in targets.items() if not t.startswith("/")),
        "rss_mb": round(p["rss"] / 2**20, 1),
        "fds": p["fds"],
        "threads": p["threads"],
        "epoll_threads": len(s["process"]["epollThreads"]),
        "table": c.get("epoll.connections.table"),
        "active": c.get("epoll.connections.active"),
        "accepted": c.get("epoll.connections.accepted"),
        "gc_heap_mb": round(s["process"]["gcHeapBytes"] / 2**20, 1),
    }


class Service:
    """A server process: its command line, its output (stdout and stderr) in log_path, its group killed at stop."""

    def __init__(self, cmd: list, log_path: Path, env: dict | None = None, cwd: str | None = None,
                 nofile: int | None = None, extra_logs=(), name: str = "server"):
        self.cmd = cmd
        self.name = name
        self.log_path = log_path
        self.extra_logs = list(extra_logs)  # other files the program writes its errors to (nginx's error.log)
        self.http_port = -1
        self.ready_s = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with open(log_path, "wb") as logf:
            self.proc = procs.spawn(cmd, nofile=nofile, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.pid = self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        text = ""
        for path in [self.log_path] + self.extra_logs:
            try:
                text += Path(path).read_text(errors="replace")
            except OSError:
                pass
        return text

    def log_tail(self, lines: int = 12) -> str:
        """The output for a failure message: from the first error on if there is one, else the end."""
        return logs.first_problem_tail(self.log_text(), lines)

    def problems(self) -> list:
        """What the server logged as errors, one line each."""
        return logs.problem_lines(self.log_text())

    def wait_answers(self, deadline_s: float) -> None:
        """Polls GET /plaintext until it answers; ServerFailure if the process exits first or the deadline passes."""
        deadline = self.started_at + deadline_s
        while not http_ok(self.http_port, timeout=1.0, proxy_header=getattr(self, "proxy_protocol", False)):
            if not self.alive():
                raise ServerFailure(f"{self.name}: the server exited ({self.proc.returncode}) before it was "
                                    f"ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerFailure(f"{self.name}: /plaintext did not answer within {deadline_s:.0f} s:\n"
                                    f"{self.log_tail()}")
            time.sleep(0.05)
        self.ready_s = time.monotonic() - self.started_at

    def stop(self, grace: float = 3.0):
        """SIGTERM to the group, SIGKILL after grace seconds; returns the exit code."""
        return procs.kill_group(self.proc, grace=grace)

    def kill(self):
        return procs.kill_group(self.proc)


class SampleServer(Service):
    """samples/WebApp from a published folder (app/WebApp: the app host of a JIT build or the native binary of an
    AOT build), on loopback, on ports the kernel picks (port 0) unless told otherwise, pinned to cpu if given.
    args: the sample's arguments after --urls/--EchoPort/--ChatPort (--Transport, configuration keys); env is added to this
    process's, with TRANSPORT_EPOLL_FAULTS removed unless env sets it. wait_ready() reads the ports from the
    sample's start-up line and waits until GET /plaintext answers."""

    def __init__(self, app: Path, args=(), env: dict | None = None, cpu: int | None = None,
                 nofile: int | None = None, log_path: Path | None = None, echo_port: int = 0,
                 http2_port: int | None = None, name: str = "server", cwd: str | None = None,
                 expect_transport: str | None = None, chat_port: int = 0):
        cmd = [str(app / "WebApp"), "--urls", f"http://{HOST}:0", "--EchoPort", str(echo_port), "--ChatPort", str(chat_port)]
        if http2_port is not None:
            cmd += ["--Http2Port", str(http2_port)]
        cmd += list(args)
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        full_env = dict(os.environ, ASPNETCORE_ENVIRONMENT="Production", DOTNET_CLI_TELEMETRY_OPTOUT="1",
                        DOTNET_NOLOGO="1")
        full_env.pop("TRANSPORT_EPOLL_FAULTS", None)
        full_env.update(env or {})
        if nofile is not None:
            # Without CAP_SYS_RESOURCE (containers) the hard limit cannot be raised: use at most the current one.
            nofile = min(nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.nofile = nofile
        self.transport = None
        self.expect_transport = expect_transport
        self.echo_port = self.file_port = self.http2_port = self.chat_port = -1
        super().__init__(cmd, log_path or Path(f"{name}.log"), env=full_env, cwd=cwd, nofile=nofile, name=name)

    def wait_ready(self, deadline_s: float = 30.0, probe: bool = True) -> None:
        """Waits for the start-up line (its ports) and, with probe, for GET /plaintext to answer; ServerFailure (the
        server stopped) if it exits first or the deadline passes. With expect_transport: never measure the wrong
        transport, the sample says which one it runs (SystemExit when it is another)."""
        expect_transport = self.expect_transport
        deadline = self.started_at + deadline_s
        while True:
            m = _STARTED.search(self.log_text())
            if m:
                break
            if not self.alive():
                raise ServerFailure(f"{self.name}: the server exited ({self.proc.returncode}) before it was "
                                    f"ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailure(f"{self.name}: no start-up line within {deadline_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

        def port(endpoint: str) -> int:
            found = re.search(r":(\d+)/?$", endpoint)
            return int(found.group(1)) if found and endpoint != "off" else -1

        self.transport = m.group("transport")
        self.http_port = port(m.group("http").split()[0])
        self.echo_port = port(m.group("echo"))
        self.http2_port = port(m.group("h2c"))
        self.file_port = port(m.group("files"))
        self.chat_port = port(m.group("chat") or "off")
        if expect_transport and self.transport != expect_transport:
            self.stop()
            raise SystemExit(f"{self.name}: expected transport={expect_transport}, the sample said: "
                             f"{m.group(0)}")
        if not probe:
            self.ready_s = time.monotonic() - self.started_at
            return
        try:
            self.wait_answers(deadline_s)
        except ServerFailure:
            self.stop()
            raise

    def stats(self, timeout: float = 10.0) -> dict:
        return get_json(self.url + "/stats", timeout)

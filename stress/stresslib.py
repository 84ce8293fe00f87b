#!/usr/bin/env python3
"""Shared helpers of the stress scripts: build the sample once into stress/.bin, start and stop it, read /stats and
/proc, and a small HTTP/1.1 and raw-echo client with hard timeouts. Python 3.9+, standard library only. Loopback only.

Also a command line for the bash scripts:
  python3 stress/stresslib.py build                      # prints the path of WebApp.dll (builds if sources changed)
  python3 stress/stresslib.py figures PID URL [FILE]     # one JSON line: rss, fds, threads, table, active, ...
                                                         # (FILE: the same with what every fd points at)
  python3 stress/stresslib.py echo-load PORT SECONDS N   # N raw echo clients in a loop, prints a summary line
  python3 stress/stresslib.py upload-load URL SECONDS N  # N clients POST /echo (64 KiB..1 MiB) in a loop, SHA-256 checked
  python3 stress/stresslib.py reset-load PORT SECONDS    # connections that send half a request and RST, in a loop
  python3 stress/stresslib.py log-check LOG [PATTERN WHY]...  # counts fail:/crit: entries and crashes in a server log;
                                                         # exit 1 if one matches no PATTERN (a regex; WHY explains it)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = HERE / ".bin"
SNAPSHOT = BIN / "src"
APP_DIR = BIN / "WebApp"
APP_DLL = APP_DIR / "WebApp.dll"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SNAPSHOT_ROOT_FILES = ["Directory.Build.props", "Directory.Packages.props", "global.json", ".editorconfig",
                       "NuGet.config", "nuget.config"]
SNAPSHOT_DIRS = ["src/Transport.Epoll", "samples/WebApp"]
SKIP_DIRS = {"bin", "obj", "TestResults", ".vs", ".idea"}


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------


def _sync_snapshot() -> bool:
    """Copies the library's and the sample's sources into .bin/src (others may be editing the working tree while a
    script runs: the build works on this copy). Returns True when something changed."""
    changed = False
    wanted = set()
    sources = [REPO / f for f in SNAPSHOT_ROOT_FILES if (REPO / f).is_file()]
    for d in SNAPSHOT_DIRS:
        for root, dirs, files in os.walk(REPO / d):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
            sources.extend(Path(root) / f for f in sorted(files))
    for src in sources:
        rel = src.relative_to(REPO)
        dst = SNAPSHOT / rel
        wanted.add(rel)
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            changed = True
    for root, dirs, files in os.walk(SNAPSHOT):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for f in files:
            path = Path(root) / f
            if path.relative_to(SNAPSHOT) not in wanted:
                path.unlink()
                changed = True
    return changed


def build() -> Path:
    """Builds samples/WebApp (Release) into stress/.bin/WebApp, from a snapshot of the sources; skips the build when
    nothing changed since the last one. A lock keeps two scripts from building at once."""
    BIN.mkdir(parents=True, exist_ok=True)
    with open(BIN / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        changed = _sync_snapshot()
        if not changed and APP_DLL.is_file():
            return APP_DLL
        t0 = time.monotonic()
        cmd = ["dotnet", "publish", str(SNAPSHOT / "samples/WebApp/WebApp.csproj"), "-c", "Release", "-o",
               str(APP_DIR), "-nologo", "-v", "q", "-p:UseAppHost=false"]
        env = dict(os.environ, DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1")
        proc = subprocess.run(cmd, cwd=str(SNAPSHOT), env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-4000:])
            # Force a rebuild next time.
            with contextlib.suppress(FileNotFoundError):
                APP_DLL.unlink()
            raise SystemExit("stress: dotnet publish of samples/WebApp failed (output above)")
        log(f"build: samples/WebApp -> {APP_DIR.relative_to(REPO)} in {time.monotonic() - t0:.1f} s")
        return APP_DLL


# ----------------------------------------------------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------------------------------------------------


def raise_nofile(n: int) -> int:
    """Raises this process's RLIMIT_NOFILE to n (root may raise the hard limit too). Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------

_log_verdicts: list[tuple[str, "LogVerdict"]] = []
_STARTED = re.compile(r"WebApp: transport=(\S+) http=http://[^ ]*:(\d+) echo=tcp://\S*:(\d+)")
_servers: list["Server"] = []


class Server:
    """The sample, started on ports picked by the kernel (port 0), its output in a log file. stop() kills it; an
    atexit-like hook (install_signal_handlers) kills every server still running when the script ends."""

    def __init__(self, transport: str = "epoll", env: dict | None = None, args: list | None = None,
                 nofile: int | None = None, cpu: int | None = None, name: str = "server", log_dir: Path | None = None,
                 start_timeout: float = 60.0):
        self.transport = transport
        self.name = name
        self.expected_log_failures: list[tuple] = []
        self.verdict: LogVerdict | None = None
        self.log_path = (log_dir or BIN / "logs") / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["dotnet", str(APP_DLL), "--urls", f"http://{HOST}:0", "--EchoPort", "0", "--Transport", transport]
        cmd += list(args or [])
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        full_env = dict(os.environ, DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1")
        full_env.pop("TRANSPORT_EPOLL_FAULTS", None)
        full_env.update(env or {})

        if nofile is not None:
            # Without CAP_SYS_RESOURCE (containers) the hard limit cannot be raised: use at most the current one.
            nofile = min(nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.nofile = nofile

        def pre():
            os.setsid()
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, preexec_fn=pre)
        _servers.append(self)
        self.pid = self.proc.pid
        deadline = time.monotonic() + start_timeout
        while True:
            text = self.log_text()
            m = _STARTED.search(text)
            if m:
                self.http_port = int(m.group(2))
                self.echo_port = int(m.group(3))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it started:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start within {start_timeout} s:\n{text[-3000:]}")
            time.sleep(0.05)
        self.url = f"http://{HOST}:{self.http_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def expect(self, pattern, why: str) -> None:
        """Declares errors this run provokes on purpose (see LogVerdict); every other fail:/crit: entry fails the script."""
        self.expected_log_failures.append((pattern, why))

    def log_verdict(self) -> LogVerdict:
        return LogVerdict(self.log_text(), self.expected_log_failures)

    def _record_log_verdict(self) -> None:
        if self.verdict is None:
            self.verdict = self.log_verdict()
            _log_verdicts.append((self.name, self.verdict))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        self._record_log_verdict()
        if self in _servers:
            _servers.remove(self)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
        self._record_log_verdict()
        if self in _servers:
            _servers.remove(self)

    # --- figures ---
    def stats(self, timeout: float = 10.0) -> dict:
        return get_json(self.url + "/stats", timeout)

    def proc_figures(self) -> dict:
        return proc_figures(self.pid)


# ----------------------------------------------------------------------------------------------------------------
# The server's log: errors and crashes
# ----------------------------------------------------------------------------------------------------------------

# The console logger's header of an entry ("fail: Category[EventId]", its message on the indented lines after it), and
# what the runtime prints when the process dies (an unhandled exception, Environment.FailFast).
_FAILURE_HEADER = re.compile(r"^(?:(?P<level>fail|crit): (?P<category>\S+?)\[(?P<event>\d+)\]|(?P<crash>Unhandled exception\.|Process terminated\.).*)$")


class LogFailure:
    """One fail:/crit: entry of the server's log, or the runtime's own report of a crash."""
    __slots__ = ("level", "category", "event_id", "text")

    def __init__(self, level: str, category: str, event_id: int, text: str):
        self.level, self.category, self.event_id, self.text = level, category, event_id, text

    @property
    def summary(self) -> str:
        """The header and the first line of the message: what the report prints."""
        return " ".join(line.strip() for line in self.text.splitlines()[:2])[:300]

    def matches(self, pattern: str) -> bool:
        return re.search(pattern, self.text, re.S) is not None

    @property
    def connection_id(self) -> str | None:
        """Kestrel's connection id the entry names, if any."""
        m = re.search(r'Connection id "([^"]+)"', self.text)
        return m.group(1) if m else None


def log_failures(text: str) -> list[LogFailure]:
    """Every fail:/crit: entry (with its indented message and exception lines) and every crash report in a log."""
    out: list[LogFailure] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FAILURE_HEADER.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or lines[j].startswith("\t") or (m.group("crash") and lines[j])):
            j += 1
        block = "\n".join(lines[i:j])
        if m.group("crash"):
            out.append(LogFailure("crash", "runtime", 0, block))
        else:
            out.append(LogFailure(m.group("level"), m.group("category"), int(m.group("event")), block))
        i = j
    return out


class LogVerdict:
    """The server log's errors split into those an expectation explains (what the run provoked on purpose, each with
    its reason) and those nothing explains (which fail the run). An expectation is (regex over the entry, why) or
    (callable(entry, the whole log text) -> bool, why), for an entry that another line of the log explains."""

    def __init__(self, text: str, expected: list[tuple] | None = None):
        self.explained: dict[str, int] = {}
        self.unexplained: list[LogFailure] = []
        failures = log_failures(text)
        self.total = len(failures)

        def matches(failure: LogFailure, pattern) -> bool:
            return pattern(failure, text) if callable(pattern) else failure.matches(pattern)

        for failure in failures:
            why = next((why for pattern, why in expected or [] if matches(failure, pattern)), None)
            if why is None:
                self.unexplained.append(failure)
            else:
                self.explained[why] = self.explained.get(why, 0) + 1

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def describe(self, limit: int = 3) -> str:
        """One line: the counts, then the first unexplained entries."""
        parts = [f"{self.total} fail/crit entries, {len(self.unexplained)} unexplained"]
        parts += [f"{n} x {why}" for why, n in self.explained.items()]
        text = "; ".join(parts)
        for failure in self.unexplained[:limit]:
            text += f"\n      unexplained: {failure.summary}"
        return text


# Kestrel's own race, on the Sockets transport too: a client that resets in the middle of a request body can leave the
# body reader's positions stale, and the endpoint's next AdvanceTo throws (about 1 in 500 such resets).
KESTREL_BODY_RESET_RACE = (
    r"^fail: Microsoft\.AspNetCore\.Server\.Kestrel\[13\].*\n\s+System\.ArgumentOutOfRangeException: .*"
    r"(MessageBody\.TrackConsumedAndExaminedBytes|Http1ContentLengthMessageBody\.AdvanceTo)",
    "Kestrel's race when a client resets mid-body (Sockets too)")


def log_bar(exit_code: int) -> int:
    """Prints what every server this script stopped logged as errors, and turns a passing exit code into a failing one
    when any server logged an error or a crash that nothing explains. Every script ends through it."""
    total = sum(v.total for _, v in _log_verdicts)
    unexplained = [(name, v) for name, v in _log_verdicts if not v.ok]
    explained: dict[str, int] = {}
    for _, v in _log_verdicts:
        for why, n in v.explained.items():
            explained[why] = explained.get(why, 0) + n
    line = (f"server logs: {len(_log_verdicts)} servers, {total} fail/crit entries, "
            f"{sum(len(v.unexplained) for _, v in unexplained)} unexplained")
    if explained:
        line += " (explained: " + ", ".join(f"{n} x {why}" for why, n in explained.items()) + ")"
    print(line, flush=True)
    for name, v in unexplained:
        for failure in v.unexplained[:3]:
            print(f"  {name}: {failure.summary}", flush=True)
    if unexplained and exit_code == 0:
        return 1
    return exit_code


def kill_all_servers() -> None:
    for s in list(_servers):
        with contextlib.suppress(Exception):
            s.kill()


def install_signal_handlers() -> None:
    """Kills the servers this script started when it is interrupted (Ctrl-C, SIGTERM) or ends."""
    import atexit
    atexit.register(kill_all_servers)

    def on_signal(signum, frame):
        kill_all_servers()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def proc_figures(pid: int) -> dict:
    """RSS (bytes), open fds, threads and CPU ticks (utime+stime) of a process, from /proc."""
    out = {"rss": 0, "fds": 0, "threads": 0, "cpu_ticks": 0}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        out["cpu_ticks"] = cpu_ticks(pid)
    return out


def fd_targets(pid: int) -> dict:
    """What the process's fds point at, counted: {"socket": 5, "/usr/share/dotnet/.../System.Linq.dll": 2, ...}."""
    out: dict = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                target = re.sub(r"^(socket|pipe|anon_inode:\[?[a-z_]+\]?).*", r"\1", target)
                out[target] = out.get(target, 0) + 1
    return out


def fd_diff(before: dict, after: dict) -> str:
    keys = sorted(set(before) | set(after))
    parts = [f"{k}: {before.get(k, 0)}->{after.get(k, 0)}" for k in keys if before.get(k, 0) != after.get(k, 0)]
    return ", ".join(parts) or "no difference"


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


def cpu_percent(pid: int, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`."""
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_ticks(pid)
    return 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0)


def get_json(url: str, timeout: float = 10.0) -> dict:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    try:
        conn.request("GET", m.group(3))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def figures(pid: int, url: str) -> dict:
    """The figures the soak and flood checks compare: /proc and /stats together."""
    p = proc_figures(pid)
    s = get_json(url + "/stats")
    c = s.get("counters", {})
    targets = fd_targets(pid)
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


def wait_for(predicate, timeout: float, interval: float = 0.2):
    """Polls predicate() until it returns a truthy value or timeout passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------------------------------


class Corrupt(Exception):
    """Bytes arrived that were never sent (or out of order): the one failure no fault may cause."""


def connect(port: int, timeout: float = 10.0, host: str = HOST) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def set_linger_rst(s: socket.socket) -> None:
    """close() then sends RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(s: socket.socket, limit: int = 1 << 31) -> bytes:
    buf = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise Corrupt(f"more than {limit} bytes")


def echo_round_trip(port: int, payload: bytes, timeout: float = 10.0, chunks: int = 1, rng=None) -> None:
    """Sends payload on a raw echo connection (in `chunks` writes, from a second thread so neither side's window
    fills), half-closes, and checks that exactly the payload comes back, then EOF. Raises Corrupt for wrong bytes,
    socket errors or TimeoutError otherwise."""
    s = connect(port, timeout)
    try:
        send_error: list = []

        def sender():
            try:
                r = rng or random.Random(len(payload))
                pos = 0
                while pos < len(payload):
                    n = max(1, len(payload) // chunks) if chunks > 1 else len(payload)
                    n = min(len(payload) - pos, r.randint(1, 2 * n) if chunks > 1 else n)
                    s.sendall(payload[pos:pos + n])
                    pos += n
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                send_error.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            if payload[len(got):len(got) + len(chunk)] != chunk:
                raise Corrupt(f"echo: bytes {len(got)}..{len(got) + len(chunk)} differ from what was sent")
            got += chunk
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError("echo: sender stuck")
        if send_error:
            raise send_error[0]
        if len(got) != len(payload):
            raise ConnectionError(f"echo: EOF after {len(got)} of {len(payload)} bytes")
    finally:
        s.close()


class HttpResponse:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body


class HttpReader:
    """Reads HTTP/1.1 responses (Content-Length or chunked) from a socket, several in a row (pipelining)."""

    def __init__(self, s: socket.socket):
        self.s = s
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("EOF in a response")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 65536:
                raise Corrupt("response line too long")
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            try:
                self._fill()
            except ConnectionError as e:
                # What arrived of the body, so the caller can check it is a prefix of what it expects.
                e.partial = bytes(self.buf)  # type: ignore[attr-defined]
                raise
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read(self) -> HttpResponse:
        status_line = self._line()
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", status_line + b" ")
        if not m:
            raise Corrupt(f"bad status line {status_line[:80]!r}")
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        if "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size))
                if self._exact(2) != b"\r\n":
                    raise Corrupt("bad chunk end")
            body = b"".join(parts)
        else:
            body = b""
        return HttpResponse(int(m.group(1)), headers, body)


def http_request_bytes(method: str, path: str, body: bytes | None = None, close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is not None:
        head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + (body or b"")


PLAINTEXT = b"Hello, World!"
JSON = b'{"message":"Hello, World!"}'


def http_echo(s: socket.socket, reader: HttpReader, body: bytes, timeout: float) -> None:
    """POST /echo on a keep-alive connection: the body goes out from a second thread while the response streams back."""
    req = http_request_bytes("POST", "/echo", body)
    err: list = []

    def sender():
        try:
            s.sendall(req)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        resp = reader.read()
    except ConnectionError as e:
        partial = getattr(e, "partial", b"")
        if partial and not body.startswith(partial[:len(body)]):
            raise Corrupt(f"POST /echo: the {len(partial)} bytes received before EOF are not a prefix of the body") from e
        raise
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError("POST /echo: sender stuck")
    if err:
        raise err[0]
    if resp.status != 200:
        raise RuntimeError(f"POST /echo: status {resp.status}")
    if hashlib.sha256(resp.body).digest() != hashlib.sha256(body).digest():
        raise Corrupt(f"POST /echo: body of {len(resp.body)} bytes differs from the {len(body)} sent (SHA-256)")


# ----------------------------------------------------------------------------------------------------------------
# Background loads for soak.sh (command line)
# ----------------------------------------------------------------------------------------------------------------


def _loop_threads(n: int, seconds: float, work) -> dict:
    counts = {"ok": 0, "fail": 0, "corrupt": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    errors: list = []

    def worker(i):
        r = random.Random(i)
        while time.monotonic() < deadline:
            try:
                work(r)
                key = "ok"
            except Corrupt as e:
                key = "corrupt"
                errors.append(str(e))
            except (OSError, ConnectionError, RuntimeError) as e:
                key = "fail"
                if len(errors) < 5:
                    errors.append(repr(e))
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    counts["errors"] = errors[:5]
    return counts


def main(argv: list) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd = argv[0]
    if cmd == "build":
        print(build())
        return 0
    if cmd == "figures":
        f = figures(int(argv[1]), argv[2])
        if len(argv) > 3:  # the full figures, with what every fd points at, into a file
            Path(argv[3]).write_text(json.dumps(f))
        f.pop("fd_targets")
        print(json.dumps(f))
        return 0
    if cmd == "echo-load":
        port, seconds, n = int(argv[1]), float(argv[2]), int(argv[3])

        def work(r):
            payload = r.randbytes(r.randint(1, 256 * 1024))
            echo_round_trip(port, payload, timeout=30, chunks=r.randint(1, 8), rng=r)

        c = _loop_threads(n, seconds, work)
        print(f"echo-load: {c['ok']} round trips ok, {c['fail']} failed, {c['corrupt']} corrupt {c['errors'] or ''}")
        return 1 if c["corrupt"] or c["fail"] else 0
    if cmd == "upload-load":
        url, seconds, n = argv[1], float(argv[2]), int(argv[3])
        port = int(url.rsplit(":", 1)[1].strip("/"))

        def work(r):
            s = connect(port, 30)
            try:
                reader = HttpReader(s)
                for _ in range(r.randint(1, 4)):
                    http_echo(s, reader, r.randbytes(r.randint(64 * 1024, 1 << 20)), 30)
            finally:
                s.close()

        c = _loop_threads(n, seconds, work)
        print(f"upload-load: {c['ok']} connections ok, {c['fail']} failed, {c['corrupt']} corrupt {c['errors'] or ''}")
        return 1 if c["corrupt"] or c["fail"] else 0
    if cmd == "reset-load":
        port, seconds = int(argv[1]), float(argv[2])
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            # A burst of 50, then a pause: "periodic resets", not a flood.
            for _ in range(50):
                try:
                    s = connect(port, 5)
                    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
                    set_linger_rst(s)
                    s.close()
                    n += 1
                except OSError:
                    pass
            time.sleep(0.5)
        print(f"reset-load: {n} connections reset")
        return 0
    if cmd == "log-check":
        pairs = argv[2:]
        if len(pairs) % 2:
            print("log-check: PATTERN without WHY", file=sys.stderr)
            return 2
        verdict = LogVerdict(Path(argv[1]).read_text(errors="replace"), list(zip(pairs[0::2], pairs[1::2])))
        print(f"server log: {verdict.describe(limit=5)}")
        return 0 if verdict.ok else 1
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

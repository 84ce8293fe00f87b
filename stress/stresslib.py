#!/usr/bin/env python3
"""What the stress scripts share: the sample built into stress/.bin and started per run (tools/harness does the
building, the processes, /proc and /stats; this adds each server's expected log errors and the verdict over all of
them), and a small HTTP/1.1 and raw-echo client with hard timeouts. Python 3.9+, standard library only. Loopback
only.

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

import hashlib
import json
import random
import re
import shutil
import socket
import struct
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))
from harness import HOST, REPO, build as harness_build, procs, sample  # noqa: E402
# Re-exported for the stress scripts (sl.figures, sl.cpu_ticks, ...): one implementation, in tools/harness.
from harness.logs import KESTREL_BODY_RESET_RACE, LogFailure, LogVerdict, log_failures  # noqa: E402, F401
from harness.procfs import cpu_percent, fd_diff, proc_figures  # noqa: E402, F401
from harness.procs import raise_nofile  # noqa: E402, F401
from harness.sample import figures  # noqa: E402, F401

BIN = HERE / ".bin"
APP_DIR = harness_build.app_dir(BIN)
APP_DLL = APP_DIR / "WebApp.dll"


def log(msg: str) -> None:
    print(msg, flush=True)


def build() -> Path:
    """Builds samples/WebApp (Release) into stress/.bin/WebApp from a snapshot of the sources (skipped when nothing
    changed since the last build); returns the path of WebApp.dll (`dotnet WebApp.dll` runs it, as does the app host
    WebApp next to it)."""
    harness_build.publish_sample(BIN, log, who="stress")
    return APP_DLL


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------

_log_verdicts: list = []
_servers: list = []


class Server(sample.SampleServer):
    """The sample, started on ports picked by the kernel (port 0), its output in a log file, ready once it printed
    its start-up line. stop() and kill() end it and keep the verdict on its log for log_bar();
    install_signal_handlers() kills every server still running when the script ends."""

    def __init__(self, transport: str = "epoll", env: dict | None = None, args: list | None = None,
                 nofile: int | None = None, cpu: int | None = None, name: str = "server", log_dir: Path | None = None,
                 start_timeout: float = 60.0):
        self.expected_log_failures: list = []
        self.verdict: LogVerdict | None = None
        super().__init__(APP_DIR, ["--Transport", transport] + list(args or []), env=env,
                         cpu=cpu if cpu is not None and shutil.which("taskset") else None, nofile=nofile,
                         log_path=(log_dir or BIN / "logs") / f"{name}.log", echo_port=0, name=name)
        _servers.append(self)
        try:
            # The start-up line only, no probe request: fault-injected runs count every syscall from the first.
            self.wait_ready(start_timeout, probe=False)
        except BaseException:
            self.kill()
            raise

    def expect(self, pattern, why: str) -> None:
        """Declares errors this run provokes on purpose (see LogVerdict); every other fail:/crit: entry fails the script."""
        self.expected_log_failures.append((pattern, why))

    def log_verdict(self) -> LogVerdict:
        return LogVerdict(self.log_text(), self.expected_log_failures)

    def _finished(self) -> None:
        if self.verdict is None:
            self.verdict = self.log_verdict()
            _log_verdicts.append((self.name, self.verdict))
        if self in _servers:
            _servers.remove(self)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        code = super().stop(grace=timeout)
        self._finished()
        return code

    def kill(self) -> None:
        super().kill()
        self._finished()

    def proc_figures(self) -> dict:
        return proc_figures(self.pid)


# ----------------------------------------------------------------------------------------------------------------
# The servers' logs, all together
# ----------------------------------------------------------------------------------------------------------------


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
        try:
            s.kill()
        except Exception:  # noqa: BLE001 (at exit: the others must still be killed)
            pass
    procs.kill_all()


def install_signal_handlers() -> None:
    """Kills the servers this script started when it is interrupted (Ctrl-C, SIGTERM, SIGHUP) or ends."""
    procs.exit_on_signals(kill_all_servers)


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

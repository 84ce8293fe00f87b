#!/usr/bin/env python3
"""Large-file download over loopback: the epoll transport's sendfile path against Kestrel's Sockets transport.

Builds samples/WebApp in Release (run.py's private snapshot in .bin/), writes a file of random bytes (256 MiB by
default) and a small one into a temp folder, serves the folder with the sample (--Files, --FilePort) from one server
per variant pinned to CPU 0, and downloads the big file from CPU 1:

  http     curl, sequential downloads over one keep-alive connection    GET /files/big.bin
  http4    4 curls at once, each downloading sequentially
  raw      the sample's raw file port (send "name\\n", get "OK <length>\\n" and the bytes): a small Python client
           (this script, --raw-client) on one connection, recv_into a 1 MiB buffer

Variants, interleaved in every round: sockets (Kestrel's Sockets transport), epoll (sendfile; the sample as shipped),
epoll-copy (epoll with EnableSendFile=false: the copy fallback through the pipe). Per sample: MiB/s, server CPU
seconds per GiB (utime + stime of the server, /proc/PID/stat, over the window), the client's share of its core.
Samples during which other processes used the CPU are dropped and measured again once (run.py's noise filter).

  python3 benchmarks/load/download.py             # 3 rounds, 256 MiB, 4 s samples: 2.5 to 4 minutes
  python3 benchmarks/load/download.py --quick     # 1 round, 64 MiB, 2 s samples: under a minute

Writes benchmarks/load/results/sendfile.md (also printed) and sendfile.json. See README.md next to this file.
Python 3.9+, standard library only, Linux only, loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import variants as variants_mod  # noqa: E402  (run.py's variants and servers, next to this file)
from report import by_cell, median_or_none as med  # noqa: E402
from variants import APP_DIR, BIN, Variant  # noqa: E402

sys.path.insert(0, str(HERE.parent.parent / "tools"))
from harness import HOST, REPO, build, cli, noise, procfs, procs, sample  # noqa: E402
MIB = 1 << 20
GIB = 1 << 30
BIG = "big.bin"
SMALL = "small.bin"
SMALL_BYTES = 1000
SENDFILE_KEY = "--Kestrel:Transport:Epoll:EnableSendFile"
DISK_READ_LIMIT_MIB = 16.0


# ----------------------------------------------------------------------------------------------------------------
# The raw file-port client (run as a child process, pinned to the client CPU, so its CPU time is measured)
# ----------------------------------------------------------------------------------------------------------------


def raw_client(host: str, port: int, name: str, count: int, want_sha: bool) -> int:
    """Downloads name count times over one connection; prints one JSON line. recv_into a 1 MiB buffer: the kernel's
    copy into it is the client's real cost, the Python loop around it is a few µs per call."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    result = {"downloads": 0, "bytes": 0, "sizes": [], "times": [], "errors": []}
    sha = hashlib.sha256() if want_sha else None
    try:
        sock = socket.create_connection((host, port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (name + "\n").encode()
        for _ in range(count):
            t0 = time.monotonic()
            sock.sendall(request)
            header = b""
            body = 0
            while True:  # the header line, and the start of the body if it came in the same segment
                n = sock.recv_into(view)
                if n == 0:
                    raise ConnectionError("the server closed the connection before the header")
                newline = buf.find(b"\n", 0, n)
                if newline >= 0:
                    header += bytes(view[:newline])
                    rest = view[newline + 1:n]
                    break
                header += bytes(view[:n])
                if len(header) > 4096:
                    raise ConnectionError(f"no header line: {header[:80]!r}")
            m = re.fullmatch(rb"OK (\d+)", header.strip())
            if not m:
                raise ConnectionError(f"the server answered {header[:200]!r}")
            length = int(m.group(1))
            if len(rest) > length:
                raise ConnectionError(f"{len(rest) - length} bytes more than the {length} announced")
            if rest:
                body += len(rest)
                if sha:
                    sha.update(rest)
            while body < length:
                n = sock.recv_into(view, min(MIB, length - body))
                if n == 0:
                    raise ConnectionError(f"the server closed the connection after {body} of {length} bytes")
                body += n
                if sha:
                    sha.update(view[:n])
            result["downloads"] += 1
            result["bytes"] += body
            result["sizes"].append(body)
            result["times"].append(round(time.monotonic() - t0, 6))
        sock.close()
    except (OSError, ConnectionError) as e:
        result["errors"].append(f"{type(e).__name__}: {e}")
    if sha:
        result["sha256"] = sha.hexdigest()
    print(json.dumps(result))
    return 0 if not result["errors"] else 1


FILEGET_C = r"""
/* fileget HOST PORT NAME COUNT: downloads NAME COUNT times over one connection from the sample's raw file port
   (send "NAME\n", get "OK <length>\n" and the bytes) into a 1 MiB buffer; prints one JSON line. Written and
   compiled into benchmarks/load/.bin/ by download.py: the measured client, which Python's start-up would slow. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (1 << 20)
static char buf[BUF];

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: fileget HOST PORT NAME COUNT\n"); return 2; }
    int count = atoi(argv[4]);
    long long *sizes = calloc(count > 0 ? count : 1, sizeof(long long));
    double *times = calloc(count > 0 ? count : 1, sizeof(double));
    char err[512] = "";
    int done = 0;
    long long total = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(err, sizeof err, "connect: %s", strerror(errno));
        goto out;
    }
    char req[300];
    int reqlen = snprintf(req, sizeof req, "%s\n", argv[3]);
    for (; done < count; done++) {
        double t0 = now();
        if (send(fd, req, reqlen, MSG_NOSIGNAL) != reqlen) { snprintf(err, sizeof err, "send: %s", strerror(errno)); goto out; }
        long long have = 0, length = -1, body = 0;
        while (length < 0) { /* the header line, and the start of the body if it came with it */
            ssize_t n = recv(fd, buf + have, 4096 - have, 0);
            if (n <= 0) { snprintf(err, sizeof err, "header: %s", n == 0 ? "closed" : strerror(errno)); goto out; }
            have += n;
            char *nl = memchr(buf, '\n', have);
            if (nl) {
                if (strncmp(buf, "OK ", 3) != 0) { snprintf(err, sizeof err, "answer: %.100s", buf); goto out; }
                length = atoll(buf + 3);
                body = have - (nl + 1 - buf);
            } else if (have >= 4096) { snprintf(err, sizeof err, "no header line"); goto out; }
        }
        if (body > length) { snprintf(err, sizeof err, "more bytes than announced"); goto out; }
        while (body < length) {
            long long want = length - body < BUF ? length - body : BUF;
            ssize_t n = recv(fd, buf, want, 0);
            if (n <= 0) { snprintf(err, sizeof err, "body after %lld of %lld bytes: %s", body, length, n == 0 ? "closed" : strerror(errno)); goto out; }
            body += n;
        }
        sizes[done] = body;
        times[done] = now() - t0;
        total += body;
    }
out:
    close(fd);
    printf("{\"downloads\": %d, \"bytes\": %lld, \"sizes\": [", done, total);
    for (int i = 0; i < done; i++) printf("%s%lld", i ? ", " : "", sizes[i]);
    printf("], \"times\": [");
    for (int i = 0; i < done; i++) printf("%s%.6f", i ? ", " : "", times[i]);
    printf("], \"errors\": [");
    if (err[0]) {
        putchar('"');
        for (char *p = err; *p; p++) if (*p >= 32 && *p < 127 && *p != '"' && *p != '\\') putchar(*p);
        putchar('"');
    }
    printf("]}\n");
    return err[0] ? 1 : 0;
}
"""
FILEGET = BIN / "fileget"


# ----------------------------------------------------------------------------------------------------------------
# Loads and variants
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    label: str
    clients: int  # processes downloading at once
    raw: bool = False


LOADS = [
    Load("http", "HTTP GET /files/big.bin, 1 curl, sequential downloads on one keep-alive connection", 1),
    Load("http4", "HTTP GET /files/big.bin, 4 curls at once, each sequential", 4),
    Load("raw", "raw file port (FileConnectionHandler), 1 connection, sequential downloads", 1, raw=True),
]
LOADS_BY_NAME = {l.name: l for l in LOADS}

BUILTIN_VARIANTS = [
    Variant("sockets", "dotnet", ["--Transport", "sockets"],
                description="Kestrel's Sockets transport: the file is copied through the response pipe"),
    Variant("epoll", "dotnet", ["--Transport", "epoll"],
                description="epoll transport, the sample as shipped (UseEpollSendFile: sendfile(2))"),
    Variant("epoll-copy", "dotnet", ["--Transport", "epoll", f"{SENDFILE_KEY}=false"],
                description="epoll transport with EnableSendFile=false: the copy fallback through the pipe"),
]


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def make_files(folder: Path, size: int) -> dict:
    """big.bin (random bytes) and small.bin; returns their SHA-256 digests and sizes."""
    sha = hashlib.sha256()
    with open(folder / BIG, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(16 * MIB, left))
            sha.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    small = os.urandom(SMALL_BYTES)
    (folder / SMALL).write_bytes(small)
    return {BIG: {"bytes": size, "sha256": sha.hexdigest()},
            SMALL: {"bytes": SMALL_BYTES, "sha256": hashlib.sha256(small).hexdigest(), "data": small}}


def warm_page_cache(path: Path) -> None:
    """cat file > /dev/null: every page of the file in the page cache before anything is measured."""
    proc = procs.spawn(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        procs.kill_group(proc)
        raise SystemExit(f"download.py: cat {path} took more than 60 s")
    procs.kill_group(proc)
    if proc.returncode != 0:
        raise SystemExit(f"download.py: cat {path} failed: {(err or b'').decode(errors='replace')}")


class PageCacheLock:
    """Keeps a file's pages in the page cache for the whole run: mmap(MAP_SHARED) + mlock(2) in this process.
    Without it this VM's memory manager (DAMON, action pageout) drops file pages it considers cold within seconds
    to a minute, so downloads would read the disk now and then, and the epoll transport would send those slices
    from a worker thread (epoll.sendfile.offloads). The transports send from the page cache as usual."""

    def __init__(self, path: Path, size: int):
        self.addr = None
        self.size = size
        self.error = ""
        libc = procs.libc()
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            if soft != resource.RLIM_INFINITY and soft < size:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        except (ValueError, OSError):
            pass
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                self.error = f"mmap: {os.strerror(ctypes.get_errno())}"
                return
            if libc.mlock(ctypes.c_void_p(addr), size) != 0:
                self.error = f"mlock: {os.strerror(ctypes.get_errno())} (RLIMIT_MEMLOCK?)"
                libc.munmap(ctypes.c_void_p(addr), size)
                return
            self.addr = addr
        finally:
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self.addr is not None

    def release(self):
        if self.addr is not None:
            procs.libc().munmap(ctypes.c_void_p(self.addr), self.size)
            self.addr = None


STAT_KEYS = ["epoll.sendfile.bytes", "epoll.sendfile.fallback_bytes", "epoll.sendfile.calls",
             "epoll.sendfile.offloads", "epoll.bytes.sent", "epoll.syscalls.write", "epoll.eagain",
             "epoll.syscalls.epoll_wait"]


def stats_delta(before: dict, after: dict) -> dict | None:
    if not before or not after:
        return None
    return {k: after.get(k, 0) - before.get(k, 0) for k in STAT_KEYS if k in after}


def curl_command(port: int, count: int, client_cpu: int, name: str = BIG) -> list:
    cmd = ["taskset", "-c", str(client_cpu), "curl", "-s", "--max-time", "120",
           "-w", "%{http_code} %{size_download} %{time_total}\\n"]
    for _ in range(count):
        cmd += ["-o", "/dev/null", f"http://{HOST}:{port}/files/{name}"]
    return cmd


def raw_command(port: int, count: int, client_cpu: int, name: str = BIG, sha: bool = False) -> list:
    """The measured client is fileget (C); the content checks use this script's --raw-client, which hashes."""
    if not sha:
        return ["taskset", "-c", str(client_cpu), str(FILEGET), HOST, str(port), name, str(count)]
    return ["taskset", "-c", str(client_cpu), sys.executable, str(Path(__file__).resolve()), "--raw-client",
            HOST, str(port), name, str(count), "--sha256"]


def parse_curl(out: str, err: str, code, expect: int, count: int) -> dict:
    r = {"downloads": 0, "bytes": 0, "errors": [], "times": []}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        status, size, total = int(parts[0]), int(parts[1]), float(parts[2])
        r["downloads"] += 1
        r["bytes"] += size
        r["times"].append(total)
        if status != 200 or size != expect:
            r["errors"].append(f"HTTP {status}, {size} of {expect} bytes")
    if r["downloads"] != count:
        r["errors"].append(f"{r['downloads']} of {count} downloads finished")
    if code is None:
        r["errors"].append("curl did not finish in time (killed)")
    elif code != 0:
        r["errors"].append(f"curl exited with {code}: {err.strip()[-200:]}")
    return r


def parse_raw(out: str, err: str, code, expect: int, count: int) -> dict:
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        return {"downloads": 0, "bytes": 0, "times": [],
                "errors": [f"the raw client printed nothing (exit {code}): {err.strip()[-300:]}"]}
    d = json.loads(lines[-1])
    r = {"downloads": d["downloads"], "bytes": d["bytes"], "times": d["times"], "errors": list(d["errors"])}
    if "sha256" in d:
        r["sha256"] = d["sha256"]
    bad = [s for s in d["sizes"] if s != expect]
    if bad:
        r["errors"].append(f"{len(bad)} downloads of the wrong size (first: {bad[0]} of {expect} bytes)")
    if d["downloads"] != count:
        r["errors"].append(f"{d['downloads']} of {count} downloads finished")
    if code is None:
        r["errors"].append("the raw client did not finish in time (killed)")
    return r


def download(load: Load, server, count: int, args, expect: int) -> tuple:
    """One run of a load: count sequential downloads per client. Returns (result, commands)."""
    if load.raw:
        cmds = [raw_command(server.file_port, count, args.client_cpu)]
    else:
        cmds = [curl_command(server.http_port, count, args.client_cpu) for _ in range(load.clients)]
    timeout = 30 + count * max(2.0, expect / (50 * MIB))  # at least 50 MiB/s per client, or it is broken
    results = procs.run_many(cmds, timeout)
    parse = parse_raw if load.raw else parse_curl
    merged = {"downloads": 0, "bytes": 0, "errors": [], "times": []}
    for code, out, err in results:
        r = parse(out, err, code, expect, count)
        merged["downloads"] += r["downloads"]
        merged["bytes"] += r["bytes"]
        merged["errors"] += r["errors"]
        merged["times"] += r["times"]
    return merged, cmds


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, loads, variants, folder: Path, files: dict, log, started: float):
        self.args = args
        self.loads = loads
        self.variants = variants
        self.folder = folder
        self.files = files
        self.size = files[BIG]["bytes"]
        self.log = log
        self.started = started
        self.workdir = folder
        self.logdir = BIN / "logs-download"
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.logdir.mkdir(parents=True)
        self.servers = {}
        self.sessions = []
        self.samples = []
        self.events = []
        self.checks = []
        self.counts = {}  # (load, variant) -> downloads per client per sample, from round 1's warm-up
        self.skipped = []

    def event(self, text: str):
        self.events.append(text)
        self.log("  ! " + text.replace("\n", "\n    "))

    # ---- servers ----

    def start(self, variant) -> sample.SampleServer | None:
        server = variants_mod.create(variant, False, self.args.server_cpu, self.workdir,
                                     self.logdir / f"download-{variant.name}-{len(self.sessions) + 1}.log",
                                     extra_args=["--Files", str(self.folder), "--FilePort", "0"])
        info = {"variant": variant.name, "command": " ".join(shlex.quote(c) for c in server.cmd),
                "log": str(server.log_path.relative_to(REPO))}
        self.sessions.append(info)
        try:
            server.wait_ready(self.args.ready_timeout)
        except sample.ServerFailure as e:
            server.stop()
            self.event(f"{variant.name}: the server did not start: {e}")
            return None
        info["ready_s"] = round(server.ready_s, 3)
        self.log(f"{variant.name}: ready in {server.ready_s:.2f} s, pid {server.pid}, http {server.http_port}, "
                 f"file port {server.file_port}")
        self.verify(variant, server)
        return server

    def verify(self, variant, server):
        """Outside any window: the small file by HTTP and by the file port (exact bytes), then one big download of
        each whose SHA-256 must be the file's (this is also the server's first warm-up)."""
        small = self.files[SMALL]
        big = self.files[BIG]
        check = {"variant": variant.name, "problems": []}
        try:
            conn = http.client.HTTPConnection(HOST, server.http_port, timeout=10)
            conn.request("GET", f"/files/{SMALL}")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status != 200 or body != small["data"]:
                check["problems"].append(f"HTTP {SMALL}: status {response.status}, {len(body)} bytes, "
                                         f"{'same' if body == small['data'] else 'different'} content")
        except (OSError, http.client.HTTPException) as e:
            check["problems"].append(f"HTTP {SMALL}: {type(e).__name__}: {e}")
        code, out, err = procs.run_bounded(raw_command(server.file_port, 1, self.args.client_cpu, SMALL, sha=True),
                                         timeout=30)
        r = parse_raw(out, err, code, small["bytes"], 1)
        if r["errors"] or r.get("sha256") != small["sha256"]:
            check["problems"].append(f"file port {SMALL}: {'; '.join(r['errors']) or 'wrong SHA-256'}")
        # HTTP: curl to stdout, hashed here.
        t0 = time.monotonic()
        proc = procs.spawn(["taskset", "-c", str(self.args.client_cpu), "curl", "-s", "--max-time", "60", "-f",
                          f"http://{HOST}:{server.http_port}/files/{BIG}"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        sha, n = hashlib.sha256(), 0
        try:
            while True:
                chunk = proc.stdout.read(4 * MIB)
                if not chunk:
                    break
                sha.update(chunk)
                n += len(chunk)
                if time.monotonic() - t0 > 90:
                    break
        finally:
            procs.kill_group(proc)
        check["http_sha256"] = sha.hexdigest()
        check["http_bytes"] = n
        if n != big["bytes"] or check["http_sha256"] != big["sha256"]:
            check["problems"].append(f"HTTP {BIG}: {n} of {big['bytes']} bytes, SHA-256 "
                                     f"{'matches' if check['http_sha256'] == big['sha256'] else 'differs'}")
        code, out, err = procs.run_bounded(raw_command(server.file_port, 1, self.args.client_cpu, BIG, sha=True),
                                         timeout=90)
        r = parse_raw(out, err, code, big["bytes"], 1)
        check["raw_sha256"] = r.get("sha256")
        if r["errors"] or r.get("sha256") != big["sha256"]:
            check["problems"].append(f"file port {BIG}: {'; '.join(r['errors']) or 'SHA-256 differs'}")
        check["ok"] = not check["problems"]
        self.checks.append(check)
        if check["problems"]:
            self.event(f"{variant.name}: content check failed: {'; '.join(check['problems'])}")
        else:
            self.log(f"{variant.name}: content checked (small file exact, big file SHA-256 by HTTP and file port)")

    def server(self, variant):
        s = self.servers.get(variant.name)
        if s is not None and s.alive() and sample.http_ok(s.http_port, timeout=3.0):
            return s
        if s is not None:
            self.event(f"{variant.name}: the server {'exited' if not s.alive() else 'stopped answering'}; "
                       f"restarting it. Its output:\n{s.log_tail()}")
            s.stop()
            del self.servers[variant.name]
        s = self.start(variant)
        if s is not None:
            self.servers[variant.name] = s
        return s

    def siblings(self, server) -> list:
        return [s.pid for s in self.servers.values() if s is not server and s.alive()]

    # ---- samples ----

    def plan(self) -> list:
        steps = [("start", 0, v, None) for v in self.variants]
        for load in self.loads:
            for rnd in range(1, self.args.rounds + 1):
                for v in self.variants:
                    steps.append(("sample", rnd, v, load))
        return steps

    def step_cost(self, kind: str) -> float:
        # a sample: its window, a warm-up download or two, the settle and /stats around it
        return self.args.window + 1.0 if kind == "sample" else 2.5 + self.size / (300 * MIB)

    def out_of_time(self, remaining: float) -> bool:
        return self.args.budget > 0 and time.monotonic() - self.started + remaining > self.args.budget

    def may_rerun(self, remaining: float) -> bool:
        """A dropped sample is measured again only if the rest of the plan still fits the budget, the plan's nominal
        costs scaled by how much slower than planned the samples so far went (as run.py does)."""
        if self.args.budget <= 0:
            return True
        done = self.nominal_done
        slowdown = 1.0 if done < 10 else min(3.0, max(1.0, (time.monotonic() - self.measure_start) / done))
        return not self.out_of_time(remaining * slowdown * 1.1 + self.args.window + 2)

    def measure(self, load: Load, variant, server, count: int, rnd: int, attempt: int) -> dict:
        before = sample.stats_counters(server.http_port) if variant.transport == "epoll" else {}
        disk0 = procfs.disk_read_kib()
        others = {name: o for name, o in self.servers.items() if o is not server and o.alive()}
        others0 = {name: procfs.cpu_seconds(o.pid) for name, o in others.items()}
        w = noise.Window(server.pid, self.siblings(server))
        r, cmds = download(load, server, count, self.args, self.size)
        cpu = w.close()
        disk_mib = (procfs.disk_read_kib() - disk0) / 1024
        idle_servers = {name: round(procfs.cpu_seconds(o.pid) - others0[name], 3) for name, o in others.items()}
        after = sample.stats_counters(server.http_port) if variant.transport == "epoll" else {}
        s = {"load": load.name, "variant": variant.name, "round": rnd, "attempt": attempt,
             "downloads_per_client": count, "clients": load.clients, **cpu,
             "downloads": r["downloads"], "bytes": r["bytes"], "disk_read_mib": round(disk_mib, 1),
             "idle_servers_cpu_s": idle_servers,
             "errors": r["errors"][:5], "download_s": {"min": min(r["times"], default=None),
                                                       "median": statistics.median(r["times"]) if r["times"] else None,
                                                       "max": max(r["times"], default=None)},
             "command": " ".join(shlex.quote(c) for c in cmds[0]) if len(cmds) == 1 else
             f"{len(cmds)} × " + " ".join(shlex.quote(c) for c in cmds[0])}
        s["mib_s"] = r["bytes"] / MIB / cpu["wall_s"] if cpu["wall_s"] > 0 and r["bytes"] else None
        s["server_s_per_gib"] = cpu["server_cpu_s"] / (r["bytes"] / GIB) if r["bytes"] else None
        s["client_s_per_gib"] = cpu["loadgen_cpu_s"] / (r["bytes"] / GIB) if r["bytes"] else None
        s["transport_stats"] = stats_delta(before, after)
        if not server.alive():
            s["errors"].append(f"the server exited ({server.proc.returncode})")
        return s

    def noisy(self, s: dict) -> bool:
        return (s.get("others_core_share") or 0) > self.args.noise_threshold or \
            (s.get("disk_read_mib") or 0) > DISK_READ_LIMIT_MIB

    def noise_reason(self, s: dict) -> str:
        why = []
        if (s.get("others_core_share") or 0) > self.args.noise_threshold:
            text = f"others used {s['others_core_share'] * 100:.0f}% of a core"
            if s["wall_s"] and s["siblings_cpu_s"] / s["wall_s"] > self.args.noise_threshold:
                text += f" ({s['siblings_cpu_s'] / s['wall_s'] * 100:.0f}% by the other variants' idle servers)"
            why.append(text)
        if (s.get("disk_read_mib") or 0) > DISK_READ_LIMIT_MIB:
            why.append(f"{s['disk_read_mib']:.0f} MiB read from disk (file pages evicted?)")
        return ", ".join(why)

    def settle(self, server, limit: float = 2.5) -> float:
        """After a sample: waits until the measured server has been idle for two 0.2 s slices in a row, at most limit
        seconds, so that what it still does after the load (.NET's tiered JIT compiles in the background, in bursts)
        does not land in the next variant's window."""
        return noise.settle(server.pid, self.args.noise_threshold, limit, slice_s=0.2, quiet_slices=2,
                            alive=server.alive)

    def sample(self, load: Load, variant, rnd: int, remaining: float):
        server = self.server(variant)
        if server is None:
            self.samples.append({"load": load.name, "variant": variant.name, "round": rnd, "attempt": 1,
                                 "dropped": False, "errors": ["the server did not start"], "mib_s": None})
            return
        key = (load.name, variant.name)
        warm_page_cache(self.folder / BIG)  # this VM may page out file pages nobody touched for a while
        # Warm-up: downloads of this load (the server sat idle while the others were measured). In round 1 it
        # also fixes how many downloads a sample makes: about --window seconds' worth at this variant's speed.
        t0 = time.monotonic()
        warm, _ = download(load, server, self.args.warmup_downloads, self.args, self.size)
        warm_s = time.monotonic() - t0
        if warm["errors"]:
            self.event(f"{variant.name}, {load.name}, round {rnd}: warm-up failed: {'; '.join(warm['errors'][:3])}")
        if key not in self.counts:
            # The warm-up's wall time per download per client (the clients' start-up is a few ms).
            per = warm_s / max(1, self.args.warmup_downloads)
            count = self.args.downloads or max(2, min(2000, round(self.args.window / max(per, 1e-3))))
            self.counts[key] = count
        count = self.counts[key]
        s = self.measure(load, variant, server, count, rnd, 1)
        if self.noisy(s):
            reason = self.noise_reason(s)
            if self.may_rerun(remaining):
                s.update(dropped=True, drop_reason=reason)
                self.samples.append(s)
                self.log_sample(s, note=f"dropped ({reason}); again")
                waited = noise.wait_quiet(server.pid, self.siblings(server), self.args.noise_threshold,
                                          3.0 if not self.args.quick else 0.6)
                warm_page_cache(self.folder / BIG)
                s = self.measure(load, variant, server, count, rnd, 2)
                s["waited_for_quiet_s"] = round(waited, 2)
                if self.noisy(s):
                    s["noisy"] = True
            else:
                s["noisy"] = True
                s["noisy_note"] = "not run again: the time budget is spent"
        s["dropped"] = False
        self.samples.append(s)
        self.log_sample(s)
        s["settle_s"] = round(self.settle(server), 2)
        self.save_partial()

    def log_sample(self, s: dict, note: str = ""):
        ts = s.get("transport_stats") or {}
        sf = ""
        if ts and s.get("bytes"):
            sf = (f", sendfile {ts.get('epoll.sendfile.bytes', 0) / s['bytes'] * 100:.0f}%"
                  f" fallback {ts.get('epoll.sendfile.fallback_bytes', 0) / s['bytes'] * 100:.0f}%")
        flags = list(s.get("errors") or [])
        if s.get("noisy"):
            flags.append(f"noisy again ({self.noise_reason(s)}), kept")
        if note:
            flags.append(note)
        mib = s.get("mib_s") or 0.0
        cost = s.get("server_s_per_gib")
        self.log(f"  {s['load']:<6} r{s['round']} {s['variant']:<11} {mib:8.0f} MiB/s  server "
                 f"{cost if cost is not None else float('nan'):.3f} s/GiB ({s['server_core_share'] * 100:.0f}% of a "
                 f"core), client {s['loadgen_core_share'] * 100:.0f}%, others {s['others_core_share'] * 100:.0f}%"
                 + (f" (idle servers {s['siblings_cpu_s'] / s['wall_s'] * 100:.0f}%)"
                    if s["wall_s"] and s.get("siblings_cpu_s") else "")
                 + (f", disk {s['disk_read_mib']:.0f} MiB" if s.get("disk_read_mib") else "")
                 + f"; {s['downloads']} downloads in {s['wall_s']:.1f} s{sf}"
                 + (f"  [{'; '.join(flags)}]" if flags else ""))

    def save_partial(self):
        tmp = BIN / "sendfile.json.tmp"
        tmp.write_text(json.dumps({"partial": True, "samples": self.samples, "events": self.events}, indent=1,
                                  default=str))

    def run(self):
        steps = self.plan()
        costs = [self.step_cost(k) for k, *_ in steps]
        self.measure_start = time.monotonic()
        self.nominal_done = 0.0
        current = None
        try:
            for i, (kind, rnd, variant, load) in enumerate(steps):
                remaining = sum(costs[i + 1:])
                self.nominal_done = sum(costs[:i])
                if kind == "start":
                    self.server(variant)
                    continue
                if self.out_of_time(costs[i]):
                    self.skipped.append(f"{load.name} r{rnd} {variant.name}")
                    continue
                if load is not current:
                    current = load
                    self.log(f"{load.name}: {load.label}")
                try:
                    self.sample(load, variant, rnd, remaining)
                except Exception as e:  # keep what was measured
                    self.event(f"{variant.name}, {load.name}, round {rnd}: the runner failed: "
                               f"{type(e).__name__}: {e}")
        finally:
            for s in self.servers.values():
                s.stop()
        if self.skipped:
            self.event(f"skipped {len(self.skipped)} sample(s), the time budget ({self.args.budget:.0f} s) was "
                       f"spent: {', '.join(self.skipped)}")


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def summarize(samples, loads, variants) -> dict:
    cells = {}
    for load, v, mine in by_cell(samples, loads, variants):
        kept = [s for s in mine if not s.get("dropped") and s.get("mib_s") and not s.get("errors")]
        clean = [s for s in kept if not s.get("noisy")]
        use = clean or kept
        rates = [s["mib_s"] for s in use]
        costs = [s["server_s_per_gib"] for s in use]
        sent = sum(s["bytes"] for s in use if s.get("transport_stats"))
        sendfile = sum((s["transport_stats"] or {}).get("epoll.sendfile.bytes", 0) for s in use
                       if s.get("transport_stats"))
        fallback = sum((s["transport_stats"] or {}).get("epoll.sendfile.fallback_bytes", 0) for s in use
                       if s.get("transport_stats"))
        cells[(load.name, v.name)] = {
            "mib_s": med(rates), "mib_s_min": min(rates, default=None), "mib_s_max": max(rates, default=None),
            "server_s_per_gib": med(costs), "server_s_per_gib_min": min(costs, default=None),
            "server_s_per_gib_max": max(costs, default=None),
            "client_s_per_gib": med(s.get("client_s_per_gib") for s in use),
            "server_share": med(s.get("server_core_share") for s in use),
            "client_share": med(s.get("loadgen_core_share") for s in use),
            "others_share": med(s.get("others_core_share") for s in use),
            "download_s": med((s.get("download_s") or {}).get("median") for s in use),
            "n": len(use), "only_noisy": not clean and bool(kept),
            "dropped": sum(1 for s in mine if s.get("dropped")),
            "failed": sum(1 for s in mine if not s.get("dropped") and s.get("errors")),
            "errors": sorted({e for s in mine for e in (s.get("errors") or [])})[:5],
            "sendfile_share": sendfile / sent if sent else None,
            "fallback_share": fallback / sent if sent else None,
        }
    return cells


def span(c, key, fmt) -> str:
    if c.get(key) is None:
        return "—"
    text = fmt(c[key])
    if c["n"] > 1:
        text += f" [{fmt(c[key + '_min'])}–{fmt(c[key + '_max'])}]"
    return text


def markdown(meta, loads, variants, cells) -> str:
    s = meta["settings"]
    m = meta["machine"]
    out = [f"# Large-file download: sendfile on the epoll transport vs Sockets, {meta['finished_utc']}", ""]
    out.append(f"`{meta['command']}` · git {meta['git']['commit'][:10]}"
               f"{' + uncommitted changes in src/ or samples/' if meta['git']['dirty'] else ''} · {m['cpu']}, "
               f"{m['cpus']} CPUs, Linux {m['kernel']} · .NET SDK {meta['dotnet']} · curl {meta['curl']} · "
               f"server on CPU {s['server_cpu']}, clients on CPU {s['client_cpu']} · file {s['size_mib']} MiB of "
               f"random bytes, in the page cache · {s['rounds']} round(s), variants interleaved per round, "
               f"{s['warmup_downloads']} warm-up download(s) + a window of about {s['window_s']:g} s per sample · "
               f"run took {meta['elapsed_s'] / 60:.1f} min")
    out.append("")
    out.append("Median [min–max] over rounds; ratios are of medians, each variant ÷ sockets. Server CPU: utime + "
               "stime of the server process (all threads) over the window, per GiB downloaded; on loopback it "
               "includes the TCP receive processing the kernel does in the sender's context (softirq). Client CPU: "
               "the downloading processes' share of their core (‡ at ≥ 90%: the client may be the limit). "
               "sendfile: bytes the transport sent with sendfile(2) / bytes downloaded (from GET /stats).")
    out.append("")
    names = [v.name for v in variants]
    base = "sockets" if "sockets" in names else None
    for load in loads:
        if not any((load.name, n) in cells for n in names):
            continue
        out.append(f"## {load.name}: {load.label}")
        out.append("")
        out.append("| variant | MiB/s | server CPU s/GiB | CPU/GiB ÷ sockets | MiB/s ÷ sockets | client CPU "
                   "| sendfile | samples (dropped) |")
        out.append("|---|---|---|---|---|---|---|---|")
        b = cells.get((load.name, base)) if base else None
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                continue
            rate = span(c, "mib_s", lambda x: f"{x:,.0f}")
            if c["only_noisy"]:
                rate += " *"
            if c["failed"]:
                rate += " ⚠"
            cost = span(c, "server_s_per_gib", lambda x: f"{x:.3f}")
            r_cost = f"{c['server_s_per_gib'] / b['server_s_per_gib']:.2f}×" \
                if b and c["server_s_per_gib"] and b["server_s_per_gib"] else "—"
            r_rate = f"{c['mib_s'] / b['mib_s']:.2f}×" if b and c["mib_s"] and b["mib_s"] else "—"
            client = "—" if c["client_share"] is None else f"{c['client_share'] * 100:.0f}%" + \
                (" ‡" if c["client_share"] >= 0.9 else "")
            sf = "—" if c["sendfile_share"] is None else f"{c['sendfile_share'] * 100:.0f}%"
            out.append(f"| {n} | {rate} | {cost} | {r_cost} | {r_rate} | {client} | {sf} | {c['n']} ({c['dropped']}) |")
        out.append("")
    out.append("## Details")
    out.append("")
    out.append("| load | variant | server CPU (% of a core) | client CPU s/GiB | others (% of a core) "
               "| one download, s (median) | sendfile / copy fallback |")
    out.append("|---|---|---|---|---|---|---|")
    pct = lambda x: "—" if x is None else f"{x * 100:.0f}%"  # noqa: E731
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                continue
            fb = "—" if c["sendfile_share"] is None else \
                f"{c['sendfile_share'] * 100:.0f}% / {c['fallback_share'] * 100:.0f}%"
            out.append(f"| {load.name} | {n} | {pct(c['server_share'])} | "
                       f"{'—' if c['client_s_per_gib'] is None else format(c['client_s_per_gib'], '.3f')} | "
                       f"{pct(c['others_share'])} | "
                       f"{'—' if c['download_s'] is None else format(c['download_s'], '.3f')} | {fb} |")
    out.append("")
    noise = meta["noise"]
    out.append(f"Noise filter: a sample is dropped when the machine's other processes (busy time in /proc/stat "
               f"minus the server, the clients and this runner) used more than {noise['threshold'] * 100:.0f}% of "
               f"one core during its window, and measured once more; a second noisy sample is kept but used only "
               f"where a cell has no clean one (marked *). {noise['dropped']} of {noise['samples']} samples "
               f"dropped, {noise['noisy_kept']} noisy twice.")
    out.append("")
    problems = []
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if c and c["failed"]:
                problems.append(f"- ⚠ {load.name} on {n}: {c['failed']} failed sample(s): {'; '.join(c['errors'])}")
    for check in meta["checks"]:
        if check["problems"]:
            problems.append(f"- ⚠ {check['variant']}: content check: {'; '.join(check['problems'])}")
    for e in meta["events"]:
        problems.append("- ⚠ " + e.splitlines()[0])
    if problems:
        out.append("## Problems")
        out.append("")
        out += problems
        out.append("")
    else:
        out.append("Content: on every variant the small file came back byte for byte and one download of the big "
                   "file by HTTP and one by the file port had the file's SHA-256 (outside the measured windows); "
                   "every measured download had the file's size.")
        out.append("")
    out.append("Variants: " + "; ".join(f"**{v.name}**: {v.description} (`{' '.join(v.args)}`)" for v in variants)
               + f". Every server also gets `--Files <temp folder> --FilePort 0 --EchoPort -1`. "
                 f"The sample's `Kestrel:Transport:Epoll` settings: `"
               + json.dumps(meta["sample_epoll_settings"], separators=(", ", ": ")) + "`.")
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="Large-file download over loopback: sendfile on the epoll transport "
                                            "against Kestrel's Sockets transport (see README.md).")
    p.add_argument("--quick", action="store_true", help="1 round, 64 MiB, 2 s windows: under a minute")
    p.add_argument("--size-mib", type=int, help="size of the big file (default 256; 64 with --quick)")
    p.add_argument("--rounds", type=int, help="rounds, variants interleaved in each (default 3; 1 with --quick)")
    p.add_argument("--window", type=float,
                   help="about this many seconds of downloading per sample: the number "
                        "of downloads is fixed per load and variant from round 1's warm-up (default 4; 2 with --quick)")
    p.add_argument("--downloads", type=int, help="downloads per client per sample, instead of --window")
    p.add_argument("--warmup-downloads", type=int, default=1, help="downloads before each sample (default 1)")
    p.add_argument("--loads", help="comma-separated, from: " + ", ".join(l.name for l in LOADS) + " (default: all)")
    p.add_argument("--variants", help="comma-separated (default: sockets,epoll,epoll-copy, plus every --variant)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="another variant, as run.py's: e.g. 'epoll-1m=--Kestrel:Transport:Epoll:MaxWriteBufferSize="
                        "1048576'")
    p.add_argument("--budget", type=float,
                   help="seconds for the whole run (default 240; 60 with --quick): noisy samples are measured again "
                        "only while the plan fits, samples are skipped past it; 0: no limit")
    noise.add_arguments(p)
    p.add_argument("--no-build", action="store_true", help="use the sample already in .bin/WebApp")
    p.add_argument("--no-mlock", action="store_true",
                   help="do not lock the big file's pages in the page cache (mmap + mlock in this process)")
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="results folder (default benchmarks/load/results/)")
    args = p.parse_args(argv)
    defaults = {"size_mib": (256, 64), "rounds": (3, 1), "window": (4.0, 2.0), "budget": (240.0, 60.0)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.size_mib < 1 or args.rounds < 1 or args.window <= 0 or args.warmup_downloads < 1 \
            or (args.downloads is not None and args.downloads < 1):
        p.error("--size-mib, --rounds, --downloads, --warmup-downloads must be at least 1, --window positive")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--raw-client":
        # download.py --raw-client HOST PORT NAME COUNT [--sha256]
        rest = argv[1:]
        return raw_client(rest[0], int(rest[1]), rest[2], int(rest[3]), "--sha256" in rest)

    started = time.monotonic()
    args = parse_args(argv)
    command = cli.command_line("benchmarks/load/download.py", argv)

    log = cli.progress_log(started)

    if not sys.platform.startswith("linux"):
        raise SystemExit("download.py: Linux only (epoll, sendfile, /proc, taskset)")
    loads = cli.pick(args.loads, LOADS, "download.py", "load")
    extra = [variants_mod.parse_variant(s, "download.py") for s in args.variant]
    variants = variants_mod.choose(args.variants, [v.name for v in BUILTIN_VARIANTS], extra, "download.py",
                                   builtin=BUILTIN_VARIANTS)
    build.check_cpus(args.server_cpu, args.client_cpu, "download.py")
    needs = [(t, t) for t in ("taskset", "curl", "dotnet", "cat")]
    if any(l.raw for l in loads):
        needs.append(("gcc", "gcc (for the raw file-port client; or leave out the raw load: --loads http,http4)"))
    build.check_tools(needs, "download.py")

    args.out.mkdir(parents=True, exist_ok=True)
    # The same lock as run.py: two benchmarks at once measure each other.
    lock = procs.hold_lock(BIN / "lock", "download.py: run.py or download.py is already running "  # noqa: F841
                                         "(benchmarks/load/.bin/lock)")
    procs.interrupt_on_signals()

    folder = Path(tempfile.mkdtemp(prefix="epoll-download-"))
    bench = None
    lock_pages = None
    try:
        digest = None
        if args.no_build:
            if not (APP_DIR / "WebApp").is_file():
                raise SystemExit("download.py: --no-build, but .bin/WebApp/WebApp does not exist")
        else:
            digest = build.publish_sample(BIN, log, who="download.py")[1]
        if any(l.raw for l in loads):
            build.build_c(BIN / "fileget.c", FILEGET, log, who="download.py", source_text=FILEGET_C)
        t0 = time.monotonic()
        files = make_files(folder, args.size_mib * MIB)
        warm_page_cache(folder / BIG)
        if not args.no_mlock:
            lock_pages = PageCacheLock(folder / BIG, files[BIG]["bytes"])
        log(f"files: {BIG} ({args.size_mib} MiB of random bytes, SHA-256 {files[BIG]['sha256'][:16]}…) and "
            f"{SMALL} in {folder}, written and read into the page cache in {time.monotonic() - t0:.1f} s; "
            + ("its pages locked there (mlock)" if lock_pages and lock_pages.locked else
               "its pages NOT locked there" + (f" ({lock_pages.error})" if lock_pages else " (--no-mlock)")
               + ": read again before every sample"))
        bench = Bench(args, loads, variants, folder, files, log, started)
        plan = sum(bench.step_cost(k) for k, *_ in bench.plan())
        log(f"plan: {len(loads)} loads × {len(variants)} variants × {args.rounds} round(s), about "
            f"{args.window:g} s per sample: about {plan / 60:.1f} min"
            + (f"; over the time budget of {args.budget:.0f} s" if args.budget > 0
               and time.monotonic() - started + plan > args.budget else ""))
        bench.run()

        dotnet = subprocess.run(["dotnet", "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=20).stdout.split()[1:2]
        kept = [s for s in bench.samples if not s.get("dropped")]
        meta = {
            "command": command,
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "git": build.git_info(),
            "sources_digest": digest,
            "machine": build.machine_info(),
            "dotnet": dotnet,
            "curl": curl[0] if curl else "",
            "sample_epoll_settings": build.sample_epoll_settings(APP_DIR),
            "settings": {"size_mib": args.size_mib, "rounds": args.rounds, "window_s": args.window,
                         "downloads": args.downloads, "warmup_downloads": args.warmup_downloads,
                         "budget_s": args.budget, "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
                         "quick": args.quick},
            "noise": {"threshold": args.noise_threshold, "samples": len(bench.samples),
                      "dropped": sum(1 for s in bench.samples if s.get("dropped")),
                      "noisy_kept": sum(1 for s in kept if s.get("noisy"))},
            "files": {k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in files.items()},
            "page_cache_locked": bool(lock_pages and lock_pages.locked),
            "page_cache_lock_error": lock_pages.error if lock_pages else "--no-mlock",
            "downloads_per_sample": {f"{k[0]}/{k[1]}": n for k, n in bench.counts.items()},
            "checks": bench.checks,
            "events": bench.events,
            "sessions": bench.sessions,
        }
        cells = summarize(bench.samples, loads, variants)
        md = markdown(meta, loads, variants, cells)
        (args.out / "sendfile.md").write_text(md)
        data = dict(meta, variants=[vars(v) for v in variants], loads=[vars(l) for l in loads],
                    summary=[dict(load=k[0], variant=k[1], **v) for k, v in cells.items()], samples=bench.samples)
        (args.out / "sendfile.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        tmp = BIN / "sendfile.json.tmp"
        if tmp.exists():
            tmp.unlink()
        print(md)
        log(f"done in {(time.monotonic() - started) / 60:.1f} min; wrote {args.out / 'sendfile.md'}, sendfile.json")
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping every server and client")
        return 130
    finally:
        procs.kill_all()
        if lock_pages:
            lock_pages.release()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Side-by-side load test of the epoll transport against Kestrel's Sockets transport.

Builds samples/WebApp in Release into a private folder, starts it once per variant and round (rounds interleaved:
A B C, A B C, ...), server pinned to one CPU and the load generators (wrk, h2load, and tcpload.c compiled here) to
the other, and writes a Markdown table, the raw data as JSON and an SVG chart to benchmarks/load/results/.
Samples during which other processes used the machine are dropped and run again once.

  python3 benchmarks/load/run.py --quick          # about 2 minutes
  python3 benchmarks/load/run.py                  # about 8 minutes
  python3 benchmarks/load/run.py --loads plaintext64,echo --variants sockets,epoll-inline

See README.md next to this file. Python 3.9+, standard library only. Linux only. Loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import fcntl
import hashlib
import http.client
import json
import math
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = HERE / ".bin"
SNAPSHOT = BIN / "src"
APP_DIR = BIN / "WebApp"
TCPLOAD = BIN / "tcpload"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# ----------------------------------------------------------------------------------------------------------------
# Loads and variants
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    label: str
    tool: str  # wrk | h2load | pingpong | bulk | idle
    conns: int
    path: str = "/plaintext"
    pipeline: int = 1
    unit: str = "req/s"
    cost_unit: str = "µs/req"  # server CPU per unit of work
    http: bool = True


LOADS = [
    Load("plaintext1", "wrk plaintext, 1 connection", "wrk", 1),
    Load("plaintext16", "wrk plaintext, 16 connections", "wrk", 16),
    Load("plaintext64", "wrk plaintext, 64 connections", "wrk", 64),
    Load("plaintext256", "wrk plaintext, 256 connections", "wrk", 256),
    Load("pipelined64", "wrk plaintext, pipelined 16 deep, 64 connections", "wrk", 64, pipeline=16),
    Load("pipelined256", "wrk plaintext, pipelined 16 deep, 256 connections", "wrk", 256, pipeline=16),
    Load("json64", "wrk JSON, 64 connections", "wrk", 64, path="/json"),
    Load("h2load64", "h2load --h1 plaintext, 64 connections", "h2load", 64),
    Load("echo", "raw TCP echo, 64 connections ping-pong of 64 B", "pingpong", 64,
         unit="round trips/s", cost_unit="µs/round trip", http=False),
    Load("bulk", "raw TCP echo, 4 connections streaming 64 KiB writes", "bulk", 4,
         unit="MB/s", cost_unit="ms/GB", http=False),
    Load("idle", "memory per idle connection, 10,000 connections", "idle", 10000,
         unit="bytes/conn", cost_unit="", http=False),
]
LOADS_BY_NAME = {load.name: load for load in LOADS}
ECHO_MSG_BYTES = 64
BULK_CHUNK_BYTES = 64 * 1024


@dataclass
class Variant:
    name: str
    kind: str  # dotnet | nginx
    args: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    description: str = ""

    @property
    def transport(self) -> str:
        if self.kind == "nginx":
            return "nginx"
        for i, arg in enumerate(self.args):
            if arg.lower() == "--transport" and i + 1 < len(self.args):
                return self.args[i + 1].lower()
            if arg.lower().startswith("--transport="):
                return arg.split("=", 1)[1].lower()
        return "epoll"


INLINE_KEY = "--Kestrel:Transport:Epoll:UnsafePreferInlineScheduling"
BUILTIN_VARIANTS = [
    Variant("sockets", "dotnet", ["--Transport", "sockets"], description="Kestrel's Sockets transport, defaults"),
    Variant("epoll", "dotnet", ["--Transport", "epoll", f"{INLINE_KEY}=false"],
            description="epoll transport, its defaults: inline scheduling forced off whatever the sample ships"),
    Variant("epoll-inline", "dotnet", ["--Transport", "epoll", f"{INLINE_KEY}=true"],
            description="epoll transport, UnsafePreferInlineScheduling=true"),
    Variant("epoll-sample", "dotnet", ["--Transport", "epoll"],
            description="epoll transport with the sample's appsettings.json as shipped, nothing overridden"),
    Variant("nginx", "nginx", description="nginx, 1 worker, return 200 (a reference, not a contender)"),
]
ENV_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def parse_variant(spec: str) -> Variant:
    """name=ARGS: ARGS are extra arguments for the sample (shell words); NAME=VALUE words are environment
    variables; without --Transport the variant runs on epoll."""
    if "=" not in spec:
        raise SystemExit(f"run.py: --variant '{spec}': expected name=ARGS, e.g. "
                         f"'epoll-1t=--Kestrel:Transport:Epoll:ThreadCount=1'")
    name, rest = spec.split("=", 1)
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise SystemExit(f"run.py: --variant name '{name}': use letters, digits, '-', '_', '.', '+'")
    env, args = {}, []
    for word in shlex.split(rest):
        if ENV_TOKEN.match(word) and not word.startswith("-"):
            key, value = word.split("=", 1)
            env[key] = value
        else:
            args.append(word)
    if not any(a.lower() == "--transport" or a.lower().startswith("--transport=") for a in args):
        args = ["--Transport", "epoll"] + args
    return Variant(name, "dotnet", args, env, description=rest.strip() or "epoll transport, the sample as shipped")


# ----------------------------------------------------------------------------------------------------------------
# Processes: every child in its own process group, killed with its group at the end whatever happens
# ----------------------------------------------------------------------------------------------------------------

_children: list = []
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    # If this runner dies without cleaning up (SIGKILL), the kernel kills the child too.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(cmd, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_child_setup, **kwargs)
    _children.append(proc)
    return proc


def kill_group(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """Stops a child and its process group (SIGTERM and up to grace seconds first, then SIGKILL). The group is
    signalled only while its leader is not yet reaped, so its id cannot belong to anyone else by then."""
    if proc.poll() is None and grace > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if proc in _children:
        _children.remove(proc)


def kill_all_children() -> None:
    for proc in list(_children):
        kill_group(proc)


def run_bounded(cmd, timeout: float, **kwargs) -> tuple:
    """Runs a load generator to its end (it is bounded by its own duration); kills it past timeout.
    Returns (returncode or None when killed, stdout, stderr)."""
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        code = None
    if proc in _children:
        _children.remove(proc)
    return code, out or "", err or ""


# ----------------------------------------------------------------------------------------------------------------
# /proc readings
# ----------------------------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 once it is gone (reported elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (user, nice, system, irq, softirq; not idle, iowait or steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Window:
    """CPU accounting over one measurement: the server, the load generator (a child reaped inside the window),
    this runner, and the whole machine; 'others' is what is left. The other variants' servers, idle meanwhile
    (siblings), are part of 'others' (they would take CPU from the measured server just the same), and are also
    reported on their own: after a load, .NET's tiered JIT can go on compiling in the background for a second."""

    def __init__(self, server_pid: int, siblings=()):
        self.pid = server_pid
        self.siblings = list(siblings)
        self.t0 = time.monotonic()
        self.siblings0 = sum(proc_cpu_seconds(p) for p in self.siblings)
        self.server0 = proc_cpu_seconds(server_pid)
        self.machine0 = machine_busy_seconds()
        self.children0 = children_cpu_seconds()
        self.self0 = self_cpu_seconds()

    def close(self) -> dict:
        wall = time.monotonic() - self.t0
        server = proc_cpu_seconds(self.pid) - self.server0
        machine = machine_busy_seconds() - self.machine0
        loadgen = children_cpu_seconds() - self.children0
        me = self_cpu_seconds() - self.self0
        others = max(0.0, machine - server - loadgen - me)
        siblings = sum(proc_cpu_seconds(p) for p in self.siblings) - self.siblings0
        return {
            "wall_s": round(wall, 4),
            "server_cpu_s": round(server, 4),
            "loadgen_cpu_s": round(loadgen, 4),
            "runner_cpu_s": round(me, 4),
            "machine_busy_s": round(machine, 4),
            "others_cpu_s": round(others, 4),
            "server_core_share": round(server / wall, 4) if wall > 0 else None,
            "loadgen_core_share": round(loadgen / wall, 4) if wall > 0 else None,
            "others_core_share": round(others / wall, 4) if wall > 0 else None,
            "siblings_cpu_s": round(siblings, 4),
        }


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------

SNAPSHOT_ROOT_FILES = ["Directory.Build.props", "Directory.Packages.props", "global.json", ".editorconfig",
                       "NuGet.config", "nuget.config"]
SNAPSHOT_DIRS = ["src", "samples"]
SKIP_DIRS = {"bin", "obj", "TestResults", ".vs", ".idea"}


def sync_snapshot() -> str:
    """Copies the working tree's sources (src/, samples/, the root build files) into .bin/src, rewriting only
    the files that changed (MSBuild's incremental build keeps working), deleting the ones that went away.
    Others may be editing src/ and samples/ meanwhile: the build works on this copy. Returns a digest."""
    digest = hashlib.sha256()
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
        digest.update(str(rel).encode() + b"\0" + data)
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for root, dirs, files in os.walk(SNAPSHOT):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for f in files:
            path = Path(root) / f
            if path.relative_to(SNAPSHOT) not in wanted:
                path.unlink()
    return digest.hexdigest()[:16]


def build_sample(log) -> str:
    log("build: copying src/ and samples/ into .bin/src, then dotnet publish -c Release -> .bin/WebApp")
    digest = sync_snapshot()
    cmd = ["dotnet", "publish", str(SNAPSHOT / "samples/WebApp/WebApp.csproj"), "-c", "Release", "-o", str(APP_DIR),
           "-nologo", "-v", "q", "-p:TreatWarningsAsErrors=false", "-p:UseAppHost=true"]
    env = dict(os.environ, DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1", DOTNET_SKIP_FIRST_TIME_EXPERIENCE="1")
    t0 = time.monotonic()
    code, out, err = run_bounded(cmd, timeout=600, env=env, cwd=str(SNAPSHOT))
    if code != 0:
        sys.stderr.write(out[-6000:] + err[-4000:])
        raise SystemExit("run.py: dotnet publish of samples/WebApp failed (the output is above); nothing was measured")
    log(f"build: done in {time.monotonic() - t0:.1f} s (sources {digest})")
    return digest


def build_tcpload(log) -> None:
    src = HERE / "tcpload.c"
    if TCPLOAD.is_file() and TCPLOAD.stat().st_mtime >= src.stat().st_mtime:
        return
    code, out, err = run_bounded(["gcc", "-O2", "-Wall", "-o", str(TCPLOAD), str(src)], timeout=120)
    if code != 0:
        raise SystemExit(f"run.py: gcc failed on tcpload.c:\n{out}{err}")
    log("build: tcpload compiled")


def check_tools(need_wrk: bool, need_h2load: bool, need_gcc: bool, need_nginx: bool) -> None:
    missing = []
    if not shutil.which("taskset"):
        missing.append("taskset (Debian package util-linux)")
    if not shutil.which("dotnet"):
        missing.append("dotnet (the .NET SDK 10)")
    if need_wrk and not shutil.which("wrk"):
        missing.append("wrk (apt-get install wrk)")
    if need_h2load and not shutil.which("h2load"):
        missing.append("h2load (apt-get install nghttp2-client)")
    if need_gcc and not shutil.which("gcc"):
        missing.append("gcc, to compile tcpload.c for the echo loads (apt-get install gcc)")
    if need_nginx and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        missing.append("nginx, for --nginx (apt-get install nginx-light)")
    if missing:
        raise SystemExit("run.py: missing, nothing installed: \n  " + "\n  ".join(missing)
                         + "\n(or leave out the loads and variants that need them: --loads, --variants)")


# ----------------------------------------------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_ok(port: int, timeout: float = 1.0) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request("GET", "/plaintext")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status == 200 and body == b"Hello, World!"
    except (OSError, http.client.HTTPException):
        return False


NGINX_CONF = """\
# Written by benchmarks/load/run.py: one process (no master), in the foreground, loopback only.
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    server {{
        listen {host}:{port} backlog=4096;
        location = /plaintext {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
        location = /json {{
            default_type application/json;
            return 200 '{{"message":"Hello, World!"}}';
        }}
    }}
}}
"""


class Server:
    def __init__(self, variant: Variant, echo: bool, server_cpu: int, workdir: Path, logdir: Path, tag: str, log):
        self.variant = variant
        self.port = free_port()
        self.echo_port = free_port() if echo and variant.kind == "dotnet" else -1
        self.log_path = logdir / f"{tag}-{variant.name}-{self.port}.log"
        self.log = log
        self.started_at = time.monotonic()
        self.ready_s = None
        self.info = {}
        logf = open(self.log_path, "w")
        if variant.kind == "nginx":
            ndir = workdir / f"nginx-{self.port}"
            ndir.mkdir(parents=True, exist_ok=True)
            (ndir / "nginx.conf").write_text(NGINX_CONF.format(dir=ndir, host=HOST, port=self.port))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = ["taskset", "-c", str(server_cpu), nginx, "-p", str(ndir), "-c", str(ndir / "nginx.conf"),
                   "-e", str(ndir / "error.log")]
            env = dict(os.environ)
            self.error_log = ndir / "error.log"
        else:
            cmd = ["taskset", "-c", str(server_cpu), str(APP_DIR / "WebApp"), "--urls", f"http://{HOST}:{self.port}",
                   "--EchoPort", str(self.echo_port), "--Http2Port", "-1"] + variant.args
            env = dict(os.environ, ASPNETCORE_ENVIRONMENT="Production", DOTNET_NOLOGO="1",
                       DOTNET_CLI_TELEMETRY_OPTOUT="1", **variant.env)
            self.error_log = None
        self.cmd = cmd
        self.proc = spawn(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                          cwd=str(workdir))
        logf.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        """The server's output for a failure message: from its first error on if it has one, else the end."""
        text = ""
        for path in (self.log_path, self.error_log):
            if path and path.is_file():
                text += path.read_text(errors="replace")
        all_lines = text.splitlines()
        for i, line in enumerate(all_lines):
            if re.match(r"^\s*(fail|crit):", line) or "Unhandled exception" in line or "WebApp: " in line \
                    and "transport=" not in line or re.search(r"\[(emerg|alert|crit)\]", line):
                return "\n".join(all_lines[i:i + lines])
        return "\n".join(all_lines[-lines:])

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerFailure(f"{self.variant.name}: the server exited ({self.proc.returncode}) before it was "
                                    f"ready:\n{self.log_tail()}")
            if http_ok(self.port, timeout=1.0):
                self.ready_s = time.monotonic() - self.started_at
                break
            time.sleep(0.05)
        else:
            raise ServerFailure(f"{self.variant.name}: /plaintext did not answer within {deadline_s:.0f} s:\n"
                                f"{self.log_tail()}")
        if self.variant.kind == "dotnet":
            # Never benchmark the wrong transport: the sample says which one it runs.
            line = next((l for l in self.log_path.read_text(errors="replace").splitlines()
                         if l.startswith("WebApp: transport=")), "")
            if f"transport={self.variant.transport} " not in line + " ":
                raise SystemExit(f"run.py: variant {self.variant.name} expected transport={self.variant.transport}, "
                                 f"the sample said: {line or '(nothing)'}")

    def problems_in_log(self) -> list:
        """What the server reported as errors: ASP.NET's 'fail:'/'crit:' entries with their message lines (indented
        below them), unhandled exceptions, nginx's [error] and worse."""
        out = []
        for path in (self.log_path, self.error_log):
            if not (path and path.is_file()):
                continue
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if re.match(r"^\s*(fail|crit):", line) or "Unhandled exception" in line or \
                        re.search(r"\[(error|crit|alert|emerg)\]", line):
                    entry = [line.strip()]
                    for more in lines[i + 1:i + 4]:
                        if not more.startswith(" "):
                            break
                        entry.append(more.strip())
                    out.append(" | ".join(entry)[:600])
        return out

    def stop(self) -> None:
        kill_group(self.proc, grace=3.0)


class ServerFailure(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Load generators and their output
# ----------------------------------------------------------------------------------------------------------------

PIPELINE_LUA = """\
-- wrk pipelining: each write carries `depth` requests (TechEmpower's pipeline.lua). Written by run.py.
init = function(args)
  local r = {}
  local depth = tonumber(args[1]) or 1
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
"""


def fmt_secs(s: float) -> str:
    return f"{max(1, round(s))}s"  # wrk takes whole seconds only


def loadgen_command(load: Load, server: Server, seconds: float, client_cpu: int, lua: Path) -> list:
    pin = ["taskset", "-c", str(client_cpu)]
    if load.tool == "wrk":
        cmd = pin + ["wrk", "-t1", f"-c{load.conns}", "-d", fmt_secs(seconds), "--latency", "--timeout", "2s"]
        if load.pipeline > 1:
            cmd += ["-s", str(lua)]
        cmd.append(f"http://{HOST}:{server.port}{load.path}")
        if load.pipeline > 1:
            cmd += ["--", str(load.pipeline)]
        return cmd
    if load.tool == "h2load":
        # h2load takes whole seconds in -D here; the window is rounded up to at least 1 s.
        return pin + ["h2load", "--h1", f"-c{load.conns}", "-t1", "-m1", "-D", str(max(1, round(seconds))),
                      f"http://{HOST}:{server.port}{load.path}"]
    if load.tool in ("pingpong", "bulk"):
        size = ECHO_MSG_BYTES if load.tool == "pingpong" else BULK_CHUNK_BYTES
        return pin + [str(TCPLOAD), load.tool, HOST, str(server.echo_port), str(load.conns), str(size), f"{seconds:g}"]
    raise ValueError(load.tool)


UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_duration_ms(text: str):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * UNIT_SECONDS[m.group(2)] * 1000 if m else None


def parse_wrk(out: str) -> dict:
    r = {"ops": 0, "rate": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["ops"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rate"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            r[key] = parse_duration_ms(m.group(1))
    if r["p99_ms"] is not None and r["p50_ms"] is not None and (r["p99_ms"] <= 0 or r["p99_ms"] < r["p50_ms"]):
        # wrk 4.1 sometimes prints 0.00us for the top percentiles with a pipelining script: not a measurement.
        r["p99_ms"] = None
        r["latency_note"] = "wrk printed an impossible latency distribution (p99 below p50); p99 left out"
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups())}
        r["errors"] = sum(r["socket_errors"].values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    if "requests in" not in out:
        r["errors"] = max(1, r["errors"])
        r["failure"] = "wrk printed no result"
    return r


def parse_h2load(out: str) -> dict:
    r = {"ops": 0, "rate": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0, "non2xx": 0}
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    if m:
        r["rate"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        r["ops"] = int(m.group(4))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["mean_ms"] = parse_duration_ms(m.group(3))
        r["max_ms"] = parse_duration_ms(m.group(2))
    if not m and r["ops"] == 0:
        r["errors"] = max(1, r["errors"])
        r["failure"] = "h2load printed no result"
    return r


def parse_tcpload(out: str) -> dict:
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        return {"ops": 0, "rate": 0.0, "errors": 1, "non2xx": 0, "failure": "tcpload printed no result"}
    d = json.loads(lines[-1])
    r = {"ops": d.get("ops", 0), "rate": d.get("rate", 0.0), "errors": d.get("errors", 1), "non2xx": 0,
         "raw": d}
    if "p50_us" in d:
        r["p50_ms"] = d["p50_us"] / 1000
        r["p99_ms"] = d["p99_us"] / 1000
    if d.get("mode") == "bulk":
        r["rate"] = d["mb_per_s"]
    closed = d.get("closed_by_server", 0)
    if closed or d.get("alive_at_end", d.get("conns")) != d.get("conns"):
        r["errors"] += closed
        r["failure"] = f"{d.get('conns', 0) - d.get('alive_at_end', 0)} of {d.get('conns')} connections lost " \
                       f"({closed} closed by the server)"
    return r


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args, loads, variants, workdir: Path, log, started: float):
        self.args = args
        self.started = started
        self.loads = loads
        self.variants = variants
        self.workdir = workdir
        self.log = log
        self.logdir = BIN / "logs"  # the servers' output, kept until the next run
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.logdir.mkdir(parents=True)
        self.lua = workdir / "pipeline.lua"
        self.lua.write_text(PIPELINE_LUA)
        self.samples = []  # every sample, kept or dropped
        self.events = []  # failures and restarts, as text
        self.sessions = []

    # One sample: a warm-up run, then the measured run with the CPU accounting around it.
    def run_load(self, load: Load, server: Server, warmup: float, window: float) -> dict:
        cmd_warm = loadgen_command(load, server, warmup, self.args.client_cpu, self.lua) if warmup > 0 else None
        if cmd_warm:
            run_bounded(cmd_warm, timeout=warmup + 20)
        cmd = loadgen_command(load, server, window, self.args.client_cpu, self.lua)
        w = Window(server.pid, self.sibling_pids(server))
        code, out, err = run_bounded(cmd, timeout=window + 20)
        cpu = w.close()
        if load.tool == "wrk":
            r = parse_wrk(out)
        elif load.tool == "h2load":
            r = parse_h2load(out)
        else:
            r = parse_tcpload(out)
        if code is None:
            r["errors"] = max(1, r.get("errors", 0))
            r["failure"] = f"the load generator did not stop within {window + 20:.0f} s (killed)"
        elif code != 0 and "failure" not in r:
            r["failure"] = f"the load generator exited with {code}: {err.strip()[-300:]}"
        r.update(cpu)
        if r["ops"] > 0:
            if load.tool == "bulk":
                # ms of server CPU per GB echoed
                r["cost"] = cpu["server_cpu_s"] * 1e3 / (r["ops"] / 1e9)
            else:
                r["cost"] = cpu["server_cpu_s"] * 1e6 / r["ops"]
        else:
            r["cost"] = None
        r["command"] = " ".join(shlex.quote(c) for c in cmd)
        if load.tool in ("wrk", "h2load"):
            r["output"] = out[-1500:]
        if not server.alive():
            r["failure"] = (r.get("failure", "") + f"; the server exited ({server.proc.returncode})").lstrip("; ")
        return r

    def idle_memory(self, server: Server) -> dict:
        """RSS growth of the server while N idle connections are open, per connection."""
        n = self.args.idle_conns
        port = str(server.port)
        pin = ["taskset", "-c", str(self.args.client_cpu)]

        def hold(count: int, max_hold: float):
            proc = spawn(pin + [str(TCPLOAD), "idle", HOST, port, str(count), f"{max_hold:g}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([proc.stdout], [], [], max_hold + 5)
            line = proc.stdout.readline() if ready else ""
            m = re.match(r"connected (\d+)", line)
            return proc, int(m.group(1)) if m else 0

        def release(proc) -> dict:
            try:
                out, err = proc.communicate(input="\n", timeout=30)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                out = ""
            if proc in _children:
                _children.remove(proc)
            lines = [l for l in out.splitlines() if l.startswith("{")]
            return json.loads(lines[-1]) if lines else {}

        # A first small batch so the accept path is jitted and its pools exist before the baseline.
        proc, _ = hold(min(200, n), 20)
        time.sleep(0.3)
        release(proc)
        time.sleep(0.5)
        fds0 = proc_fd_count(server.pid)
        rss0 = proc_rss_kib(server.pid)
        t0 = time.monotonic()
        proc, opened = hold(n, 60)
        # Wait until the server holds them all (its fd count), at most 15 s.
        deadline = time.monotonic() + 15
        accepted = 0
        while time.monotonic() < deadline and server.alive():
            accepted = proc_fd_count(server.pid) - fds0
            if accepted >= opened:
                break
            time.sleep(0.1)
        time.sleep(self.args.idle_settle)
        rss1 = proc_rss_kib(server.pid) if server.alive() else rss0
        accepted = proc_fd_count(server.pid) - fds0
        info = release(proc)
        result = {
            "ops": opened, "rate": (rss1 - rss0) * 1024 / opened if opened else 0.0, "errors": 0, "non2xx": 0,
            "rss_before_kib": rss0, "rss_after_kib": rss1, "fds_accepted": accepted, "opened": opened,
            "client": info, "wall_s": round(time.monotonic() - t0, 3), "cost": None,
        }
        if opened < n:
            result["failure"] = f"only {opened} of {n} connections could be opened"
        elif accepted < opened * 0.99:
            result["failure"] = f"the server held {accepted} of {opened} connections after 15 s"
        if info and info.get("alive_at_end", opened) < opened:
            result["errors"] = opened - info.get("alive_at_end", 0)
            result["failure"] = (result.get("failure", "") + f"; {result['errors']} idle connections were closed "
                                 f"by the server").lstrip("; ")
        if not server.alive():
            result["failure"] = f"the server exited ({server.proc.returncode})"
        return result

    def record(self, load: Load, variant: Variant, rnd: int, attempt: int, r: dict, dropped: bool, reason: str = ""):
        r = dict(r, load=load.name, variant=variant.name, round=rnd, attempt=attempt, dropped=dropped)
        if reason:
            r["drop_reason"] = reason
        self.samples.append(r)
        self.save_partial()
        return r

    def save_partial(self):
        tmp = self.args.out / "latest.json.tmp"
        tmp.write_text(json.dumps({"partial": True, "samples": self.samples, "events": self.events}, indent=1))

    def start_server(self, variant: Variant, echo: bool, what: str) -> Server:
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", what)
        server = Server(variant, echo, self.args.server_cpu, self.workdir, self.logdir, tag, self.log)
        server.info = {"variant": variant.name, "what": f"{variant.name}, {what}", "log_problems": [],
                       "log": str(server.log_path.relative_to(REPO)),
                       "command": " ".join(shlex.quote(c) for c in server.cmd)}
        self.sessions.append(server.info)
        try:
            server.wait_ready(self.args.ready_timeout)
        except BaseException:
            self.finish_server(server)
            raise
        server.info["ready_s"] = round(server.ready_s, 3)
        self.log(f"{variant.name} ({what}): ready in {server.ready_s:.2f} s, pid {server.pid}")
        return server

    def finish_server(self, server: Server):
        server.stop()
        server.info["log_problems"] = server.problems_in_log()

    # ---- the plan, and what is left of it (for the time budget) ----

    @staticmethod
    def warm_key(load: Load) -> str:
        """The server code path a load exercises: its HTTP path, or the raw echo handler."""
        return load.path if load.http else "echo"

    def variant_loads(self, variant: Variant) -> list:
        """The measured loads (not idle memory) a variant runs: nginx runs the HTTP ones only."""
        return [l for l in self.loads if l.tool != "idle"
                and (variant.kind == "dotnet" or (l.http and l.tool in ("wrk", "h2load")))]

    def session_warmup_plan(self, variant: Variant) -> list:
        """What a server runs once after it starts: (load, seconds). .NET servers need long: the JIT's tiering (tier 0,
        then instrumented, then optimized with PGO) goes on for 30-40 s of load on one core here, and until it is done
        both throughput and p99 measure the JIT: epoll-inline at 64 connections did 31k, 58k, 56k, 70k, 78k, 80k req/s
        in consecutive 10 s windows after start, p99 118, 3.4, 3.9, 1.7, 1.4, 1.1 ms; Sockets 30k to 53k, p99 28 to
        1.9 ms. So most of it is plaintext, then a few seconds of each other code path the run measures, so the
        tiering of those paths is done too. nginx needs only its connections warm."""
        total = self.args.session_warmup
        if total <= 0:
            return []
        if variant.kind != "dotnet":
            return [(LOADS_BY_NAME["plaintext64"], min(total, 3))]
        others = []
        for load in self.variant_loads(variant):
            key = self.warm_key(load)
            if key != "/plaintext" and key not in {self.warm_key(o) for o in others}:
                others.append(load)
        each = min(4, total // (len(others) + 2)) if others else 0
        return [(LOADS_BY_NAME["plaintext64"], total - each * len(others))] + [(o, each) for o in others if each > 0]

    def wants_warmup(self, load: Load, warmed: set) -> bool:
        # Full runs warm up before every sample (the server sat idle while the other variants were measured).
        # Quick runs only when the load's code path is new to the server: that is what fits them in 2 minutes.
        return self.args.warmup > 0 and (not self.args.quick or self.warm_key(load) not in warmed)

    def build_plan(self) -> list:
        """The run, step by step, with each step's nominal seconds:
        1. memory per idle connection, each on a server started for it and stopped after, rounds interleaved;
        2. every variant's server started once and warmed up; they stay up, idle when not measured;
        3. for each load, for each round, each variant in turn (A B C, A B C, ...): a sample.
        Neighbouring samples of one load are seconds apart, so a burst of noise or a drift of the machine hits
        the variants alike, which a whole session per variant would not."""
        steps = []
        idle = next((l for l in self.loads if l.tool == "idle"), None)
        if idle:
            for rnd in range(1, self.args.rounds + 1):
                for v in self.variants:
                    if v.kind == "dotnet":
                        steps.append(("idle", rnd, v, idle, 1.0 + 3.0 + self.args.idle_settle))
        warmed = {}
        for v in self.variants:
            if self.variant_loads(v):
                plan = self.session_warmup_plan(v)
                steps.append(("start", 0, v, None, 1.0 + sum(seconds for _, seconds in plan)))
                warmed[v.name] = {self.warm_key(load) for load, _ in plan}
        if warmed:
            steps.append(("settle", 0, None, None, 1.0))
        for load in self.loads:
            if load.tool == "idle":
                continue
            for rnd in range(1, self.args.rounds + 1):
                for v in self.variants:
                    if load in self.variant_loads(v):
                        cost = self.args.window + 0.45  # start-up of the load generator, settle()
                        if self.wants_warmup(load, warmed[v.name]):
                            cost += self.args.warmup
                        warmed[v.name].add(self.warm_key(load))
                        steps.append(("sample", rnd, v, load, cost))
        return steps

    def plan_seconds(self) -> float:
        return sum(step[-1] for step in self.build_plan())

    def slowdown(self, remaining: float) -> float:
        """How much slower than planned the run has been so far (a busy machine starts processes slowly too):
        elapsed measuring time over the nominal cost of what is done, once there is enough to judge, 1 to 3."""
        done = self.plan_total - remaining
        if done < 10:
            return 1.0
        return min(3.0, max(1.0, (time.monotonic() - self.measure_start) / done))

    def may_rerun(self, remaining: float) -> bool:
        """A dropped sample is measured again only if the run still ends within its time budget."""
        if self.args.budget <= 0:
            return True
        expected = remaining * self.slowdown(remaining) * 1.1 + self.args.window + 0.3
        return time.monotonic() - self.started + expected <= self.args.budget

    def out_of_time(self, cost: float) -> bool:
        """True when even the planned work (cost seconds) no longer fits the budget: the run then skips it, so it
        stops on time on a machine too busy to measure anything useful anyway."""
        return self.args.budget > 0 and time.monotonic() - self.started + cost > self.args.budget

    def quiet_wait_limit(self, remaining: float) -> float:
        limit = 0.6 if self.args.quick else 4.0
        if self.args.budget > 0:
            slack = self.args.budget - (time.monotonic() - self.started) - remaining * self.slowdown(remaining) \
                - self.args.window - 0.3
            limit = min(limit, max(0.0, slack))
        return limit

    def wait_quiet(self, server: Server, limit: float) -> float:
        """Before running a dropped sample again: waits, at most limit seconds, for a 0.3 s slice in which the other
        processes use less than the threshold. Returns the seconds waited (0 when the machine was quiet at once)."""
        t0 = time.monotonic()
        while True:
            w = Window(server.pid, self.sibling_pids(server))
            time.sleep(0.3)
            if w.close()["others_core_share"] <= self.args.noise_threshold:
                break
            if time.monotonic() - t0 >= limit:
                break
        waited = time.monotonic() - t0
        return 0.0 if waited < 0.35 else waited

    # ---- running it ----

    def run(self):
        steps = self.build_plan()
        costs = [step[-1] for step in steps]
        self.plan_total = sum(costs)
        self.measure_start = time.monotonic()
        self.servers = {}  # variant name -> its resident server
        self.warmed = {}  # variant name -> code paths its resident server has run
        self.broken = set()  # variants whose server would not start
        self.skipped = []
        self.echo = any(l.tool in ("pingpong", "bulk") for l in self.loads)
        current = None
        try:
            for k, (kind, rnd, variant, load, cost) in enumerate(steps):
                remaining = sum(costs[k + 1:])
                if kind in ("idle", "sample") and self.out_of_time(cost):
                    self.skipped.append(f"{load.name} r{rnd} {variant.name}")
                    self.record(load, variant, rnd, 1, {"ops": 0, "rate": None, "errors": 0, "skipped": True,
                                                        "failure": "skipped: the time budget was spent"},
                                dropped=False)
                    continue
                if kind == "sample" and load is not current:
                    current = load
                    self.log(f"{load.name}: {load.label}")
                try:
                    if kind == "idle":
                        self.idle_step(variant, rnd, load)
                    elif kind == "start":
                        if not self.out_of_time(cost):
                            self.ensure_server(variant, before="the loads")
                    elif kind == "settle":
                        # The last warm-up's background JIT finishes before the first sample, not during it.
                        if self.servers:
                            first = next(iter(self.servers.values()))
                            self.wait_quiet(first, 2.0)
                    else:
                        self.sample_step(load, variant, rnd, remaining)
                except Exception as e:  # a bug here must not lose the samples already taken
                    what = f"{variant.name if variant else 'all'}, {load.name if load else kind}, round {rnd}"
                    self.event(f"{what}: the runner failed: {type(e).__name__}: {e}")
                    if load:
                        self.record(load, variant, rnd, 1, {"ops": 0, "rate": None, "errors": 1,
                                                            "failure": f"runner error: {type(e).__name__}: {e}"},
                                    dropped=False)
        finally:
            for server in self.servers.values():
                self.finish_server(server)
        if self.skipped:
            self.event(f"skipped {len(self.skipped)} sample(s), the time budget ({self.args.budget:.0f} s) was "
                       f"spent: {', '.join(self.skipped)}")

    def sibling_pids(self, server: Server) -> list:
        return [s.pid for s in getattr(self, "servers", {}).values() if s is not server and s.alive()]

    def ensure_server(self, variant: Variant, before: str):
        """The variant's resident server, started (and warmed up) if it is not running, restarted if it died or
        stopped answering. None when it cannot be started: that is recorded once, and its samples fail fast."""
        if variant.name in self.broken:
            return None
        server = self.servers.get(variant.name)
        if server is not None:
            if server.alive() and http_ok(server.port, timeout=3.0):
                return server
            state = "exited" if not server.alive() else "stopped answering /plaintext"
            self.event(f"{variant.name}: before {before}, the server {state}; restarting it. Its output:\n"
                       f"{server.log_tail()}")
            self.finish_server(server)
            del self.servers[variant.name]
        restarts = sum(1 for s in self.sessions if s["variant"] == variant.name and "loads" in s["what"])
        try:
            server = self.start_server(variant, self.echo and variant.kind == "dotnet",
                                       "loads" if restarts == 0 else f"loads, restart {restarts}")
        except ServerFailure as e:
            self.event(f"{variant.name}: the server did not start: {e}")
            self.broken.add(variant.name)
            return None
        self.servers[variant.name] = server
        self.warmed[variant.name] = set()
        for load, seconds in self.session_warmup_plan(variant):
            # Once per server: the JIT and the pools warm before the first measured load.
            run_bounded(loadgen_command(load, server, seconds, self.args.client_cpu, self.lua), timeout=seconds + 20)
            self.warmed[variant.name].add(self.warm_key(load))
        return server

    def idle_step(self, variant: Variant, rnd: int, load: Load):
        try:
            server = self.start_server(variant, False, f"idle memory, round {rnd}")
        except ServerFailure as e:
            self.event(f"{variant.name}: the server did not start for the idle-memory step: {e}")
            self.record(load, variant, rnd, 1, {"ops": 0, "rate": None, "errors": 1,
                                                "failure": "the server did not start"}, dropped=False)
            return
        try:
            r = self.idle_memory(server)
        finally:
            self.finish_server(server)
        self.record(load, variant, rnd, 1, r, dropped=False)
        self.log(f"  idle memory  r{rnd} {variant.name:<13} {r['rate']:>8.0f} bytes/conn  (RSS "
                 f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB, {r['fds_accepted']} "
                 f"accepted)" + (f"  [{r['failure']}]" if r.get("failure") else ""))

    def sample_step(self, load: Load, variant: Variant, rnd: int, remaining: float):
        """One sample of one load on one variant, and a second one if the first was noisy.
        remaining: the nominal seconds of the plan after this step (for the time budget)."""
        server = self.ensure_server(variant, before=f"{load.name}, round {rnd}")
        if server is None:
            self.record(load, variant, rnd, 1, {"ops": 0, "rate": None, "errors": 1,
                                                "failure": "the server did not start"}, dropped=False)
            return
        warmed = self.warmed[variant.name]
        warmup = self.args.warmup if self.wants_warmup(load, warmed) else 0
        warmed.add(self.warm_key(load))
        r = self.run_load(load, server, warmup, self.args.window)
        attempt = 1
        if self.noisy(r):
            reason = f"others used {r['others_core_share'] * 100:.0f}% of a core"
            if r["wall_s"] and r["siblings_cpu_s"] / r["wall_s"] > self.args.noise_threshold:
                reason += f", {r['siblings_cpu_s'] / r['wall_s'] * 100:.0f}% by the other variants' idle servers"
            if self.may_rerun(remaining):
                self.record(load, variant, rnd, attempt, r, dropped=True, reason=reason)
                waited = self.wait_quiet(server, self.quiet_wait_limit(remaining))
                self.log(f"  r{rnd} {variant.name:<13} dropped ({reason}); again"
                         + (f" after waiting {waited:.1f} s for the machine to calm down" if waited else ""))
                attempt = 2
                # No warm-up: the dropped run was one.
                r = self.run_load(load, server, 0, self.args.window)
                r["waited_for_quiet_s"] = round(waited, 2)
                if self.noisy(r):
                    r["noisy"] = True
            else:
                r["noisy"] = True
                r["noisy_note"] = "not run again: the time budget is spent"
        self.record(load, variant, rnd, attempt, r, dropped=False)
        self.log_sample(load, variant, rnd, r)
        self.samples[-1]["settle_s"] = round(self.settle(server), 2)

    def settle(self, server: Server, limit: float = 2.0) -> float:
        """After a sample, waits (at most limit seconds) until the server just measured is idle, so that what it
        still does after the load (.NET's tiered JIT compiles in the background for up to a second or so) does not
        land in the next variant's window. Only this server is watched: other people's work does not make it wait."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit and server.alive():
            c0 = proc_cpu_seconds(server.pid)
            time.sleep(0.25)
            if (proc_cpu_seconds(server.pid) - c0) / 0.25 <= self.args.noise_threshold:
                break
        return time.monotonic() - t0

    def noisy(self, r: dict) -> bool:
        share = r.get("others_core_share")
        return share is not None and share > self.args.noise_threshold

    def event(self, text: str):
        self.events.append(text)
        self.log("  ! " + text.replace("\n", "\n    "))

    def log_sample(self, load: Load, variant: Variant, rnd: int, r: dict):
        lat = f" p99 {r['p99_ms']:.2f} ms" if r.get("p99_ms") is not None else ""
        cost = f" {r['cost']:.1f} {load.cost_unit}" if r.get("cost") is not None else ""
        flags = []
        if r.get("errors"):
            flags.append(f"{r['errors']} errors")
        if r.get("non2xx"):
            flags.append(f"{r['non2xx']} non-2xx")
        if r.get("failure"):
            flags.append(r["failure"])
        if r.get("noisy"):
            again = "not run again, the time budget is spent" if r.get("noisy_note") else "noisy again"
            flags.append(f"{again}: others {r['others_core_share'] * 100:.0f}% of a core, kept")
        rate = r.get("rate") or 0.0
        self.log(f"  r{rnd} {variant.name:<13} {rate:>10.1f} {load.unit}{lat}{cost}; server "
                 f"{r['server_core_share'] * 100:.0f}%"
                 f", load-gen {r['loadgen_core_share'] * 100:.0f}%, others {r['others_core_share'] * 100:.0f}%"
                 + (f"  [{'; '.join(flags)}]" if flags else ""))


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def fmt_rate(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MB/s":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if unit == "bytes/conn":
        return f"{value / 1024:.2f} KiB" if value >= 1024 else f"{value:.0f} B"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 1e3:
        return f"{value / 1e3:.2f}k"
    return f"{value:.0f}"


def fmt_num(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(samples, loads, variants) -> dict:
    cells = {}
    for load in loads:
        for v in variants:
            mine = [s for s in samples if s["load"] == load.name and s["variant"] == v.name]
            if not mine:
                continue
            kept_all = [s for s in mine if not s["dropped"]]
            measured = [s for s in kept_all if s.get("rate") is not None]
            # Samples that were noisy twice are kept, but only used when the cell has no clean sample at all.
            clean = [s for s in measured if not s.get("noisy")]
            noisy_kept = len(measured) - len(clean)
            only_noisy = not clean and bool(measured)
            kept = clean or measured
            rates = [s["rate"] for s in kept if s.get("rate") is not None]
            cells[(load.name, v.name)] = {
                "median": median_or_none(rates),
                "min": min(rates) if rates else None,
                "max": max(rates) if rates else None,
                "n": len(rates),
                "dropped": sum(1 for s in mine if s["dropped"]),
                "noisy_kept": noisy_kept,
                "only_noisy": only_noisy,
                "p50_ms": median_or_none(s.get("p50_ms") for s in kept),
                "p99_ms": median_or_none(s.get("p99_ms") for s in kept),
                "cost": median_or_none(s.get("cost") for s in kept),
                "server_share": median_or_none(s.get("server_core_share") for s in kept),
                "loadgen_share": median_or_none(s.get("loadgen_core_share") for s in kept),
                "others_share": median_or_none(s.get("others_core_share") for s in kept),
                # Failures count wherever they happened, in noisy and dropped samples too.
                "errors": sum(s.get("errors") or 0 for s in mine),
                "non2xx": sum(s.get("non2xx") or 0 for s in mine),
                "failures": sorted({s["failure"] for s in mine if s.get("failure")}),
            }
    return cells


def ratio_columns(variants) -> list:
    names = [v.name for v in variants]
    cols = []
    if "sockets" in names:
        cols += [(v.name, "sockets") for v in variants if v.name not in ("sockets", "nginx")]
    if "nginx" in names:
        cols += [(v.name, "nginx") for v in variants if v.kind == "dotnet" and v.transport == "epoll"]
    return cols


def markdown(meta, loads, variants, cells) -> str:
    names = [v.name for v in variants]
    ratios = ratio_columns(variants)
    out = [f"# Load test: epoll transport vs Sockets, {meta['finished_utc']}", ""]
    out.append(f"`{meta['command']}` · git {meta['git']['commit'][:10]}"
               f"{' + uncommitted changes' if meta['git']['dirty'] else ''} · {meta['machine']['cpu']}, "
               f"{meta['machine']['cpus']} CPUs, Linux {meta['machine']['kernel']} · .NET SDK {meta['dotnet']} · "
               f"server on CPU {meta['settings']['server_cpu']}, load generator on CPU "
               f"{meta['settings']['client_cpu']} · {meta['settings']['rounds']} round(s), variants interleaved per load, "
               f"{meta['settings']['warmup_s']:g} s warm-up + {meta['settings']['window_s']:g} s window per sample · "
               f"run took {meta['elapsed_s'] / 60:.1f} min")
    out.append("")
    out.append("Median [min–max] over rounds; ratios of medians; p99 in ms; server CPU time per unit of work "
               "(µs per request or round trip, ms per GB for bulk). ‡: the load generator used ≥ 90% of its core, "
               "so the server may be able to do more. *: no clean sample, these numbers were taken while other processes were busy. ⚠: errors, "
               "see Problems. Memory per idle connection: lower is better (server RSS growth / connections).")
    out.append("")
    head = ["load"] + names + [f"{a} ÷ {b}" for a, b in ratios] + \
           ["p99 ms (" + " / ".join(names) + ")", "server CPU per op (" + " / ".join(names) + ")"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for load in loads:
        if not any((load.name, n) in cells for n in names):
            continue
        row = [f"{load.label} ({load.unit})"]
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                row.append("n/a")
                continue
            text = fmt_rate(c["median"], load.unit)
            if c["n"] > 1:
                text += f" [{fmt_rate(c['min'], load.unit)}–{fmt_rate(c['max'], load.unit)}]"
            if c["loadgen_share"] is not None and c["loadgen_share"] >= 0.9:
                text += " ‡"
            if c["only_noisy"]:
                text += " *"
            if c["errors"] or c["non2xx"] or c["failures"]:
                text += " ⚠"
            row.append(text)
        for a, b in ratios:
            ca, cb = cells.get((load.name, a)), cells.get((load.name, b))
            if ca and cb and ca["median"] and cb["median"]:
                row.append(f"{ca['median'] / cb['median']:.2f}×")
            else:
                row.append("—")
        row.append(" / ".join(fmt_num(cells[(load.name, n)]["p99_ms"], 2) if (load.name, n) in cells else "—"
                              for n in names))
        row.append(" / ".join(fmt_num(cells[(load.name, n)]["cost"], 1) if (load.name, n) in cells else "—"
                              for n in names) + (f" {load.cost_unit}" if load.cost_unit else ""))
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if meta.get("chart"):
        out.append(f"![requests/s against connections, wrk plaintext]({meta['chart']})")
        out.append("")
    out.append("## Details")
    out.append("")
    out.append("| load | variant | median [min–max] | p50 ms | p99 ms | server CPU per op | server CPU (% of a core) "
               "| load-gen CPU (% of a core) | others (% of a core) | errors / non-2xx | samples used (noisy unused, dropped) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                continue
            pct = lambda x: "—" if x is None else f"{x * 100:.0f}%"  # noqa: E731
            span = fmt_rate(c["median"], load.unit) + (f" [{fmt_rate(c['min'], load.unit)}–"
                                                       f"{fmt_rate(c['max'], load.unit)}]" if c["n"] > 1 else "")
            unit = "per connection" if load.unit == "bytes/conn" else load.unit
            out.append(f"| {load.name} | {n} | {span} {unit} | {fmt_num(c['p50_ms'], 3)} | "
                       f"{fmt_num(c['p99_ms'], 2)} | {fmt_num(c['cost'], 1)} {load.cost_unit} | "
                       f"{pct(c['server_share'])} | {pct(c['loadgen_share'])} | {pct(c['others_share'])} | "
                       f"{c['errors']} / {c['non2xx']} | {c['n']}{' noisy' if c['only_noisy'] else ''} "
                       f"({0 if c['only_noisy'] else c['noisy_kept']}, {c['dropped']}) |")
    out.append("")
    noise = meta["noise"]
    out.append(f"Noise filter: a sample is dropped when the other processes of the machine (all busy CPU time in "
               f"/proc/stat minus the server, the load generator and this runner) used more than "
               f"{noise['threshold'] * 100:.0f}% of one core during its window, and run once more. "
               f"A second noisy sample is kept but used only where a cell has no clean one (marked *). "
               f"{noise['dropped']} of {noise['samples']} samples dropped; {noise['noisy_kept']} noisy twice"
               + (f"; {noise['noisy_not_rerun']} noisy but not run again because the time budget "
                  f"({meta['settings'].get('budget_s', 0):.0f} s) was spent" if noise.get("noisy_not_rerun") else "")
               + ".")
    out.append("")
    problems = []
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if c and (c["errors"] or c["non2xx"] or c["failures"]):
                what = []
                if c["errors"]:
                    what.append(f"{c['errors']} errors")
                if c["non2xx"]:
                    what.append(f"{c['non2xx']} non-2xx responses")
                what += c["failures"]
                problems.append(f"- ⚠ {load.name} on {n}: " + "; ".join(what))
    for e in meta["events"]:
        problems.append("- ⚠ " + e.splitlines()[0])
    for s in meta["sessions"]:
        if s.get("log_problems"):
            problems.append(f"- ⚠ {s.get('what', s['variant'])}: the server logged {len(s['log_problems'])} "
                            f"error line(s), first: `{s['log_problems'][0][:300]}` (whole output: `{s['log']}`)")
    if problems:
        out.append("## Problems")
        out.append("")
        out += problems
        out.append("")
    if meta.get("sample_epoll_settings"):
        out.append("The sample's appsettings.json, `Kestrel:Transport:Epoll` (under the variants' own overrides): `"
                   + json.dumps(meta["sample_epoll_settings"], separators=(", ", ": ")) + "`.")
        out.append("")
    out.append("Variants: " + "; ".join(f"**{v.name}**: {v.description}"
                                        + (f" (`{' '.join(v.args)}`)" if v.args else "") for v in variants) + ".")
    out.append("")
    return "\n".join(out)


def svg_chart(loads, variants, cells, title: str, subtitle: str = "") -> str | None:
    """requests/s against connections (wrk plaintext), one line per variant, log-scale x axis. Hand-drawn SVG."""
    points = {}
    xs = sorted({l.conns for l in loads if l.tool == "wrk" and l.path == "/plaintext" and l.pipeline == 1})
    for v in variants:
        pts = []
        for l in loads:
            if l.tool == "wrk" and l.path == "/plaintext" and l.pipeline == 1:
                c = cells.get((l.name, v.name))
                if c and c["median"]:
                    pts.append((l.conns, c["median"], c["min"], c["max"]))
        if pts:
            points[v.name] = sorted(pts)
    if not points or len(xs) < 2:
        return None
    width, height = 720, 440
    left, right, top, bottom = 80, 170, 56, 60
    pw, ph = width - left - right, height - top - bottom
    ymax_raw = max(p[3] for pts in points.values() for p in pts)
    step = 10 ** math.floor(math.log10(ymax_raw)) if ymax_raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if ymax_raw / (m * step) <= 8:
            step *= m
            break
    ymax = math.ceil(ymax_raw * 1.05 / step) * step
    lx0, lx1 = math.log2(xs[0]), math.log2(xs[-1])

    def px(x):
        inset = 24  # keep the end points off the axes
        return left + inset + (math.log2(x) - lx0) / (lx1 - lx0) * (pw - 2 * inset)

    def py(y):
        return top + ph - y / ymax * ph

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>',
           f'<text x="{left + pw / 2}" y="39" text-anchor="middle" font-size="11" fill="#555">{esc(subtitle)}</text>']
    y = 0.0
    while y <= ymax + 1e-9:
        svg.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#e0e0e0"/>')
        svg.append(f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{f"{y / 1000:g}k" if y else "0"}'
                   f'</text>')
        y += step
    for x in xs:
        svg.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
        svg.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{x}</text>')
    svg.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>')
    svg.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>')
    svg.append(f'<text x="{left + pw / 2}" y="{height - 18}" text-anchor="middle">connections (wrk, log scale)</text>')
    svg.append(f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + ph / 2})">requests/s (median; bars: min–max)</text>')
    for i, (name, pts) in enumerate(points.items()):
        color = colors[i % len(colors)]
        dash = ' stroke-dasharray="6 4"' if name == "nginx" else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(m):.1f}" for j, (x, m, _, _) in enumerate(pts))
        svg.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, m, lo, hi in pts:
            if hi is not None and lo is not None and hi > lo:
                svg.append(f'<line x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" '
                           f'stroke="{color}" stroke-width="1.5"/>')
            svg.append(f'<circle cx="{px(x):.1f}" cy="{py(m):.1f}" r="3.5" fill="{color}"/>')
        ly = top + 10 + i * 22
        svg.append(f'<line x1="{left + pw + 20}" y1="{ly}" x2="{left + pw + 48}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        svg.append(f'<circle cx="{left + pw + 34}" cy="{ly}" r="3.5" fill="{color}"/>')
        svg.append(f'<text x="{left + pw + 56}" y="{ly + 4}">{esc(name)}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def write_report(meta: dict, loads: list, variants: list, samples: list, out: Path) -> tuple:
    """latest.md, latest.json and plaintext.svg in out/, from the samples; returns (markdown, whether a chart)."""
    cells = summarize(samples, loads, variants)
    s = meta["settings"]
    chart = svg_chart(loads, variants, cells, "wrk plaintext: requests/s against connections",
                      f"server on 1 core · {meta['finished_utc']} · git {meta['git']['commit'][:10]}"
                      f"{'+' if meta['git']['dirty'] else ''} · {s['rounds']} round(s) × {s['window_s']} s")
    meta = dict(meta)
    meta.pop("chart", None)
    if chart:
        (out / "plaintext.svg").write_text(chart)
        meta["chart"] = "plaintext.svg"
    md = markdown(meta, loads, variants, cells)
    (out / "latest.md").write_text(md)
    data = dict(meta, variants=[vars(v) for v in variants], loads=[vars(l) for l in loads],
                summary=[dict(load=k[0], variant=k[1], **v) for k, v in cells.items()], samples=samples)
    (out / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return md, bool(chart)


def report_only(path: Path, out: Path) -> int:
    """--report: the table, chart and JSON again from a results JSON, without measuring (after a change to the
    report code, or to put a saved run back as latest)."""
    data = json.loads(path.read_text())
    loads = [Load(**d) for d in data["loads"]]
    variants = [Variant(**d) for d in data["variants"]]
    meta = {k: v for k, v in data.items() if k not in ("loads", "variants", "summary", "samples")}
    out.mkdir(parents=True, exist_ok=True)
    md, _ = write_report(meta, loads, variants, data["samples"], out)
    print(md)
    return 0


def json_with_comments(text: str):
    """appsettings.json allows // and /* */ comments and trailing commas; json does not."""
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def sample_epoll_settings():
    """The Kestrel:Transport:Epoll section of the built sample's appsettings.json: what 'epoll' runs with besides
    the runner's overrides."""
    try:
        settings = json_with_comments((APP_DIR / "appsettings.json").read_text())
        return settings.get("Kestrel", {}).get("Transport", {}).get("Epoll", {})
    except (OSError, ValueError, AttributeError) as e:
        return {"unreadable": str(e)}


def git_info() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO)] + list(a), capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    status = git("status", "--porcelain", "--", "src", "samples")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(status)}


def machine_info() -> dict:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "affinity": sorted(os.sched_getaffinity(0))}


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Side-by-side load test of the epoll transport and Kestrel's Sockets transport (see README.md).")
    p.add_argument("--quick", action="store_true",
                   help="1 round, 1 s windows, warm-up only when a load's code path is new to the server: "
                        "under 2 minutes")
    p.add_argument("--loads", help="comma-separated, from: " + ", ".join(l.name for l in LOADS) + " (default: all)")
    p.add_argument("--variants", help="comma-separated variant names (default: sockets,epoll,epoll-inline, "
                                      "plus nginx with --nginx, plus every --variant)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="another variant: extra sample arguments, NAME=VALUE words as environment, e.g. "
                        "'epoll-1t=--Kestrel:Transport:Epoll:ThreadCount=1' (repeatable)")
    p.add_argument("--nginx", action="store_true", help="add nginx (1 worker, return 200) as a reference")
    p.add_argument("--rounds", type=int, help="rounds, interleaved (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, help="whole seconds of load before each window (default 1; 1 with --quick)")
    p.add_argument("--window", type=int, help="whole seconds measured per sample (default 3; 1 with --quick)")
    p.add_argument("--session-warmup", type=int,
                   help="whole seconds of load once per server start, mostly plaintext, a few seconds of each other "
                        "code path measured (default 40; 8 with --quick): the JIT's tiering takes that long")
    p.add_argument("--budget", type=float,
                   help="seconds the whole run may take (default 590; 115 with --quick): dropped samples are run "
                        "again only while the plan still fits; 0: no limit")
    p.add_argument("--noise-threshold", type=float, default=0.10,
                   help="drop a sample when other processes used more than this share of one core (default 0.10)")
    p.add_argument("--idle-conns", type=int, default=10000, help="connections for the idle load (default 10000)")
    p.add_argument("--idle-settle", type=float,
                   help="seconds between the server holding them all and reading its RSS (default 1; 0.5 quick)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--ready-timeout", type=float, default=30.0, help="seconds for the server to answer /plaintext")
    p.add_argument("--no-build", action="store_true", help="use the sample already in .bin/WebApp")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: results/)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="measure nothing: write the table and chart again from a results JSON")
    args = p.parse_args(argv)
    defaults = {"rounds": (3, 1), "warmup": (1, 1), "window": (3, 1), "session_warmup": (40, 8), "budget": (590, 115),
                "idle_settle": (1.0, 0.5)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.rounds < 1 or args.window < 1 or args.warmup < 0 or args.session_warmup < 0:
        p.error("--rounds and --window must be at least 1, --warmup and --session-warmup not negative")
    return args


def main(argv=None) -> int:
    started = time.monotonic()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python3 benchmarks/load/run.py" + ("" if not sys.argv[1:] else " " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]))

    def log(text: str):
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    if args.report:
        return report_only(args.report, args.out)
    if not sys.platform.startswith("linux"):
        raise SystemExit("run.py: Linux only (epoll, /proc, taskset)")

    # Loads and variants
    if args.loads:
        names = [n.strip() for n in args.loads.split(",") if n.strip()]
        unknown = [n for n in names if n not in LOADS_BY_NAME]
        if unknown:
            raise SystemExit(f"run.py: unknown load(s) {', '.join(unknown)}; known: "
                             + ", ".join(l.name for l in LOADS))
        loads = [l for l in LOADS if l.name in names]
    else:
        loads = list(LOADS)
    idle_label = f"memory per idle connection, {args.idle_conns:,} connections"
    loads = [Load(l.name, idle_label, l.tool, args.idle_conns, unit=l.unit, cost_unit=l.cost_unit, http=False)
             if l.tool == "idle" else l for l in loads]
    extra = [parse_variant(s) for s in args.variant]
    available = {v.name: v for v in BUILTIN_VARIANTS}
    for v in extra:
        available[v.name] = v
    if args.variants:
        chosen = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in available]
        if unknown:
            raise SystemExit(f"run.py: unknown variant(s) {', '.join(unknown)}; known: {', '.join(available)} "
                             f"(add one with --variant name=ARGS)")
        variants = [available[n] for n in chosen]
    else:
        variants = [available[n] for n in ("sockets", "epoll", "epoll-inline")] + extra
        if args.nginx:
            variants.append(available["nginx"])
    if len({v.name for v in variants}) != len(variants):
        raise SystemExit("run.py: a variant is named twice")

    # Machine
    cpus = os.sched_getaffinity(0)
    if args.server_cpu == args.client_cpu or args.server_cpu not in cpus or args.client_cpu not in cpus:
        raise SystemExit(f"run.py: --server-cpu {args.server_cpu} and --client-cpu {args.client_cpu} must be two "
                         f"different CPUs of {sorted(cpus)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers and load generators
    if any(l.tool == "idle" for l in loads) and hard != resource.RLIM_INFINITY and args.idle_conns + 512 > hard:
        raise SystemExit(f"run.py: {args.idle_conns} idle connections need more open files than the hard limit "
                         f"{hard} (ulimit -Hn) allows; use --idle-conns {max(100, hard - 1000)} or raise the limit")
    check_tools(need_wrk=any(l.tool == "wrk" for l in loads), need_h2load=any(l.tool == "h2load" for l in loads),
                need_gcc=any(l.tool in ("pingpong", "bulk", "idle") for l in loads),
                need_nginx=any(v.kind == "nginx" for v in variants))

    args.out.mkdir(parents=True, exist_ok=True)
    BIN.mkdir(parents=True, exist_ok=True)
    lock = open(BIN / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("run.py: another run.py is running (benchmarks/load/.bin/lock); two at once would measure "
                         "each other")

    # Ctrl+C and SIGTERM end the run through the finally below, which kills every child's process group.
    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    workdir = Path(tempfile.mkdtemp(prefix="epoll-load-"))
    try:
        digest = None
        if any(v.kind == "dotnet" for v in variants):
            if args.no_build:
                if not (APP_DIR / "WebApp").is_file():
                    raise SystemExit("run.py: --no-build, but .bin/WebApp/WebApp does not exist")
            else:
                digest = build_sample(log)
        if any(l.tool in ("pingpong", "bulk", "idle") for l in loads):
            build_tcpload(log)
        runner = Runner(args, loads, variants, workdir, log, started)
        estimate = runner.plan_seconds()
        log(f"plan: {len(loads)} loads × {len(variants)} variants × {args.rounds} round(s), "
            f"{args.warmup} s warm-up + {args.window} s window per sample: about {estimate / 60:.1f} min of measuring"
            + (f"; over the time budget of {args.budget:.0f} s (cut --rounds or --window)"
               if args.budget > 0 and time.monotonic() - started + estimate > args.budget else ""))
        runner.run()

        # Results
        dotnet = subprocess.run(["dotnet", "--version"], capture_output=True, text=True).stdout.strip()
        meta = {
            "command": command,
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "git": git_info(),
            "sources_digest": digest,
            "machine": machine_info(),
            "dotnet": dotnet,
            "tools": {t: (shutil.which(t) or "") for t in ("wrk", "h2load", "nginx", "gcc")},
            "sample_epoll_settings": sample_epoll_settings(),
            "settings": {"budget_s": args.budget, "rounds": args.rounds, "warmup_s": args.warmup,
                         "window_s": args.window, "session_warmup_s": args.session_warmup,
                         "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
                         "idle_conns": args.idle_conns, "quick": args.quick},
            "noise": {"threshold": args.noise_threshold,
                      "samples": len([s for s in runner.samples if s["load"] != "idle"]),
                      "dropped": sum(1 for s in runner.samples if s["dropped"]),
                      "noisy_kept": sum(1 for s in runner.samples if s.get("noisy") and not s["dropped"]
                                        and not s.get("noisy_note")),
                      "noisy_not_rerun": sum(1 for s in runner.samples if s.get("noisy_note"))},
            "events": runner.events,
            "sessions": runner.sessions,
        }
        md, chart = write_report(meta, loads, variants, runner.samples, args.out)
        tmp = args.out / "latest.json.tmp"
        if tmp.exists():
            tmp.unlink()
        print(md)
        log(f"done in {(time.monotonic() - started) / 60:.1f} min; wrote {args.out / 'latest.md'}, latest.json"
            + (", plaintext.svg" if chart else ""))
        return 0
    except KeyboardInterrupt:
        log(f"interrupted: stopping every server and load generator (partial data in "
            f"{args.out / 'latest.json.tmp'})")
        return 130
    finally:
        kill_all_children()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

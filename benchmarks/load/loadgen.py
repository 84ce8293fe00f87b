"""The load generators of run.py: which loads there are, each one's command line (wrk, h2load, tcpload.c), and
parsers of their output into one result shape: ops, rate, p50_ms, p99_ms, errors, non2xx (and failure, a text,
when the run was not what it should be)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
TCPLOAD_SRC = HERE / "tcpload.c"
TCPLOAD = HERE / ".bin" / "tcpload"
CONNRATE_SRC = HERE / "connrate.c"
CONNRATE = HERE / ".bin" / "connrate"
CONNRATE_WORKERS = 4


@dataclass(frozen=True)
class Load:
    name: str
    label: str
    tool: str  # wrk | h2load | connrate | pingpong | bulk | fanout | idle
    conns: int
    path: str = "/plaintext"
    pipeline: int = 1
    unit: str = "req/s"
    cost_unit: str = "µs/req"  # server CPU per unit of work
    http: bool = True
    h2c: bool = False  # HTTP/2 with prior knowledge, on the sample's --Http2Port (h2load only)
    streams: int = 1  # requests in flight per connection (h2load -m)


LOADS = [
    Load("plaintext1", "wrk plaintext, 1 connection", "wrk", 1),
    Load("plaintext16", "wrk plaintext, 16 connections", "wrk", 16),
    Load("plaintext64", "wrk plaintext, 64 connections", "wrk", 64),
    Load("plaintext256", "wrk plaintext, 256 connections", "wrk", 256),
    Load("pipelined64", "wrk plaintext, pipelined 16 deep, 64 connections", "wrk", 64, pipeline=16),
    Load("pipelined256", "wrk plaintext, pipelined 16 deep, 256 connections", "wrk", 256, pipeline=16),
    Load("json64", "wrk JSON, 64 connections", "wrk", 64, path="/json"),
    Load("h2load64", "h2load --h1 plaintext, 64 connections", "h2load", 64),
    Load("h2c64", "h2load h2c plaintext, 64 connections, 10 streams each", "h2load", 64, h2c=True, streams=10),
    Load("connrate", "new connections: connect, GET /plaintext, close (RST), 4 at a time; a PROXY v2 header first on a "
         "server started with --ProxyProtocol true", "connrate", CONNRATE_WORKERS, unit="conn/s", cost_unit="µs/conn"),
    Load("echo", "raw TCP echo, 64 connections ping-pong of 64 B", "pingpong", 64,
         unit="round trips/s", cost_unit="µs/round trip", http=False),
    Load("bulk", "raw TCP echo, 4 connections streaming 64 KiB writes", "bulk", 4,
         unit="MB/s", cost_unit="ms/GB", http=False),
    Load("fanout", "chat broadcast, a 64 B line to 10,000 connections, 16 broadcasts in flight", "fanout", 10001,
         unit="lines/s", cost_unit="µs/line", http=False),
    Load("idle5k", "memory per idle connection, 5,000 connections", "idle", 5000,
         unit="bytes/conn", cost_unit="", http=False),
    Load("idle", "memory per idle connection, 10,000 connections", "idle", 10000,
         unit="bytes/conn", cost_unit="", http=False),
]
LOADS_BY_NAME = {load.name: load for load in LOADS}
ECHO_MSG_BYTES = 64
BULK_CHUNK_BYTES = 64 * 1024
FANOUT_LINE_BYTES = 64

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


def needs(loads) -> list:
    """(program, what to say when it is missing) for harness.build.check_tools."""
    out = []
    if any(l.tool == "wrk" for l in loads):
        out.append(("wrk", "wrk (apt-get install wrk)"))
    if any(l.tool == "h2load" for l in loads):
        out.append(("h2load", "h2load (apt-get install nghttp2-client)"))
    if any(l.tool in ("pingpong", "bulk", "fanout", "idle") for l in loads):
        out.append(("gcc", "gcc, to compile tcpload.c for the echo loads (apt-get install gcc)"))
    return out


def fmt_secs(s: float) -> str:
    return f"{max(1, round(s))}s"  # wrk takes whole seconds only


def command(load: Load, server, seconds: float, client_cpu: int, lua: Path) -> list:
    """The load generator's command line for one run of seconds against server (its http_port, echo_port and
    http2_port), pinned to client_cpu."""
    http_port, echo_port = server.http_port, server.echo_port
    pin = ["taskset", "-c", str(client_cpu)]
    if load.tool == "wrk":
        cmd = pin + ["wrk", "-t1", f"-c{load.conns}", "-d", fmt_secs(seconds), "--latency", "--timeout", "2s"]
        if load.pipeline > 1:
            cmd += ["-s", str(lua)]
        cmd.append(f"http://{HOST}:{http_port}{load.path}")
        if load.pipeline > 1:
            cmd += ["--", str(load.pipeline)]
        return cmd
    if load.tool == "h2load":
        # h2load takes whole seconds in -D here; the window is rounded up to at least 1 s. Without --h1 and with an
        # http:// URI h2load speaks HTTP/2 with prior knowledge (h2c), which the sample serves on its Http2Port only.
        protocol = [] if load.h2c else ["--h1"]
        port = server.http2_port if load.h2c else http_port
        return pin + ["h2load"] + protocol + [f"-c{load.conns}", "-t1", f"-m{load.streams}", "-D",
                                              str(max(1, round(seconds))), f"http://{HOST}:{port}{load.path}"]
    if load.tool == "connrate":
        # The header only where the server requires one (variants.create sets proxy_protocol from its arguments).
        header = "2" if getattr(server, "proxy_protocol", False) else "0"
        return pin + [str(CONNRATE), str(http_port), f"{seconds:g}", str(load.conns), header]
    if load.tool in ("pingpong", "bulk"):
        size = ECHO_MSG_BYTES if load.tool == "pingpong" else BULK_CHUNK_BYTES
        return pin + [str(TCPLOAD), load.tool, HOST, str(echo_port), str(load.conns), str(size), f"{seconds:g}"]
    if load.tool == "fanout":
        return pin + [str(TCPLOAD), "fanout", HOST, str(server.chat_port), str(load.conns), str(FANOUT_LINE_BYTES),
                      f"{seconds:g}"]
    raise ValueError(load.tool)


def idle_command(http_port: int, count: int, max_hold: float, client_cpu: int) -> list:
    """tcpload idle: opens count connections that send nothing, prints 'connected N', holds them until a line on
    stdin (or max_hold seconds), then checks they are all open and resets them."""
    return ["taskset", "-c", str(client_cpu), str(TCPLOAD), "idle", HOST, str(http_port), str(count), f"{max_hold:g}"]


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
    if d.get("bad_lines"):
        r["failure"] = f"{d['bad_lines']} chat lines torn, out of order or not the broadcast"
    closed = d.get("closed_by_server", 0)
    if closed or d.get("alive_at_end", d.get("conns")) != d.get("conns"):
        r["errors"] += closed
        r["failure"] = f"{d.get('conns', 0) - d.get('alive_at_end', 0)} of {d.get('conns')} connections lost " \
                       f"({closed} closed by the server)"
    return r


def parse_connrate(out: str, seconds: float) -> dict:
    m = re.search(r"connections/s (\d+) failed (\d+)", out)
    if not m:
        return {"ops": 0, "rate": 0.0, "errors": 1, "non2xx": 0, "failure": "connrate printed no result"}
    rate, failed = float(m.group(1)), int(m.group(2))
    return {"ops": int(rate * seconds), "rate": rate, "errors": failed, "non2xx": 0}


def parse(load: Load, out: str, seconds: float = 0.0) -> dict:
    if load.tool == "connrate":
        return parse_connrate(out, seconds)
    if load.tool == "wrk":
        return parse_wrk(out)
    if load.tool == "h2load":
        return parse_h2load(out)
    return parse_tcpload(out)

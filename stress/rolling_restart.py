#!/usr/bin/env python3
"""Rolling restart on one port under load (issue 14): wrk -> HAProxy -> two instances of the sample on ONE port.

The sample runs with AllowPortSharing (SO_REUSEPORT), HAProxy's backend is that one port, and wrk keeps 64
connections busy through HAProxy while the script restarts the app RESTARTS times in a row: start the new instance
on the same port (the kernel now spreads new connections over both), wait until it listens, then stop the old one
gracefully (SIGTERM: it stops accepting, tells its connections to close, finishes what is in flight, exits). The bar:
wrk sees 0 socket errors and 0 non-2xx responses, every old instance exits 0 within its drain window, no server logs
an error. HAProxy does not retry (retries 0, retry-on none), so every failure of a backend connection reaches wrk.

What happens to connections already queued for the stopping instance depends on net.ipv4.tcp_migrate_req (see
docs/DEPLOYMENT.md): --migrate on/off runs everything in a network namespace of its own (needs root and unshare) with
the setting forced, so both behaviours can be measured without touching the machine's; --migrate host uses the
machine's namespace and setting as they are.

HAProxy talks to the backend with a new connection per request by default (option http-server-close): every request
is an accept on the shared port, which is where a restart could lose one. --backend-keepalive reuses backend
connections instead (HAProxy's default): then a restart also closes idle keep-alive connections, whose race with a
request sent at the same moment is HTTP/1.1's own (see docs/DEPLOYMENT.md).

  python3 stress/rolling_restart.py                  # 5 restarts, 64 connections, tcp_migrate_req=1 in a netns
  python3 stress/rolling_restart.py --migrate off    # the same with the kernel's default, 0
Needs: haproxy and wrk (apt-get install -y haproxy wrk), the .NET SDK. Everything is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))
sys.path.insert(0, str(HERE))

import stresslib  # noqa: E402
from harness import HOST, procs  # noqa: E402
from harness.sample import free_port, http_get  # noqa: E402

MIGRATE_SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--interval", type=float, default=4.0, help="seconds of load between restarts (default 4)")
    p.add_argument("--drain", type=float, default=10.0, help="the instances' --ShutdownTimeout, seconds (default 10)")
    p.add_argument("--drain-delay", type=float, default=0.0,
                   help="the instances' --DrainDelay, seconds: keep serving with Connection: close before Kestrel "
                        "stops (default 0)")
    p.add_argument("--migrate", choices=["on", "off", "host"], default=None,
                   help="net.ipv4.tcp_migrate_req in a network namespace of its own (on, off) or the machine's as it is "
                        "(host); default: on when root, else host")
    p.add_argument("--backend-keepalive", action="store_true", help="HAProxy reuses backend connections")
    p.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def enter_netns(args) -> int:
    """Re-runs this script inside a new network namespace (unshare -n), where loopback is up and
    tcp_migrate_req is what --migrate says; the build happens out here first (restore may need the network)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        sys.exit("rolling_restart: --migrate on/off needs root, unshare and ip (a network namespace of its own); "
                 "use --migrate host to run in the machine's namespace")
    value = "1" if args.migrate == "on" else "0"
    inner = (f"ip link set lo up && echo {value} > {MIGRATE_SYSCTL} && "
             f"exec {sys.executable} {Path(__file__).resolve()} --inside-netns " + " ".join(sys.argv[1:]))
    deadline = 120 + args.restarts * (args.interval + args.drain + 30)
    return subprocess.run(["unshare", "--net", "--", "sh", "-c", inner], timeout=deadline).returncode


def haproxy_config(frontend: int, backend: int, keepalive: bool) -> str:
    mode = "option http-keep-alive\n    http-reuse safe" if keepalive else "option http-server-close"
    return f"""global
    maxconn 4096
    nbthread 1

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    # No second chances: a backend connection that fails must show up in wrk's figures.
    retries 0
    {mode}

frontend fe
    bind {HOST}:{frontend}
    default_backend app

backend app
    retry-on none
    server app {HOST}:{backend}
"""


def start_instance(n: int, port: int, args, log_dir: Path) -> stresslib.Server:
    return stresslib.Server(name=f"instance-{n}", log_dir=log_dir, args=[
        "--urls", f"http://{HOST}:{port}", "--EchoPort", "-1", "--ChatPort", "-1", "--ShutdownTimeout", str(args.drain),
        "--DrainDelay", str(args.drain_delay), "--Kestrel:Transport:Epoll:AllowPortSharing", "true"])


def wrk_figures(text: str) -> dict:
    def num(pattern, default=0):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else default

    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups()))) if m else {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    return {"requests": num(r"(\d+) requests in"), "socket_errors": errors,
            "non_2xx": num(r"Non-2xx or 3xx responses: (\d+)"), "rps": float(rps.group(1)) if rps else 0.0}


def main() -> int:
    args = parse_args()
    if args.migrate is None:
        args.migrate = "on" if os.geteuid() == 0 and shutil.which("unshare") else "host"
    for tool in ("haproxy", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"rolling_restart: {tool} is missing: apt-get install -y haproxy wrk")
    if not args.inside_netns:
        stresslib.build()
        if args.migrate != "host":
            return enter_netns(args)

    procs.exit_on_signals()
    log_dir = stresslib.BIN / "logs" / "rolling"
    log_dir.mkdir(parents=True, exist_ok=True)
    migrate = MIGRATE_SYSCTL.read_text().strip() if MIGRATE_SYSCTL.exists() else "absent"
    stresslib.log(f"kernel {os.uname().release}, net.ipv4.tcp_migrate_req = {migrate}"
                  f"{' (own network namespace)' if args.inside_netns else ''}; backend connections: "
                  f"{'keep-alive' if args.backend_keepalive else 'one per request'}, drain delay {args.drain_delay:g} s")

    port, frontend = free_port(), free_port()
    old = start_instance(0, port, args, log_dir)
    cfg = log_dir / "haproxy.cfg"
    cfg.write_text(haproxy_config(frontend, port, args.backend_keepalive))
    with open(log_dir / "haproxy.log", "wb") as hlog:
        haproxy = procs.spawn(["haproxy", "-db", "-f", str(cfg)], stdout=hlog, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if http_get(frontend, "/plaintext", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or haproxy.poll() is not None:
            sys.exit(f"rolling_restart: HAProxy did not answer on {frontend}: {(log_dir / 'haproxy.log').read_text()}")
        time.sleep(0.05)

    duration = int(args.interval * (args.restarts + 1) + args.restarts * (3 + args.drain_delay) + 2)
    stresslib.log(f"wrk -c{args.connections} -d{duration}s through HAProxy :{frontend} -> sample :{port}; "
                  f"{args.restarts} restarts every {args.interval:.0f} s")
    wrk_log = log_dir / "wrk.log"
    with open(wrk_log, "wb") as wlog:
        wrk = procs.spawn(["wrk", "-t2", f"-c{args.connections}", f"-d{duration}s", "--timeout", "5s",
                           f"http://{HOST}:{frontend}/plaintext"], stdout=wlog, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)

    ok = True
    for n in range(1, args.restarts + 1):
        time.sleep(args.interval)
        t0 = time.monotonic()
        new = start_instance(n, port, args, log_dir)
        up = time.monotonic() - t0
        t1 = time.monotonic()
        code = old.stop(timeout=args.drain + 10)
        down = time.monotonic() - t1
        line = f"restart {n}: instance-{n} listening after {up:.1f} s; instance-{n - 1} stopped (exit {code}) in {down:.1f} s"
        stresslib.log(line)
        if code != 0:
            ok = False
        old = new

    try:
        wrk.wait(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        procs.kill_group(wrk)
        ok = False
    procs.forget(wrk)
    old.stop(timeout=args.drain + 10)
    procs.kill_group(haproxy, grace=2)

    text = wrk_log.read_text(errors="replace")
    f = wrk_figures(text)
    errors = sum(f["socket_errors"].values())
    print(text.strip(), flush=True)
    print(f"rolling restart: {args.restarts} restarts, {f['requests']} requests ({f['rps']:.0f}/s), "
          f"socket errors {errors} {f['socket_errors'] or ''}, non-2xx {f['non_2xx']}, "
          f"tcp_migrate_req={migrate}, backend {'keep-alive' if args.backend_keepalive else 'per request'}, "
          f"drain delay {args.drain_delay:g} s",
          flush=True)
    if errors or f["non_2xx"] or f["requests"] == 0:
        ok = False
    return stresslib.log_bar(0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())

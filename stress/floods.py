#!/usr/bin/env python3
"""Floods: many connections at once, connect/close and RST storms, and fd exhaustion, against the sample.

  (a) concurrent: N connections (default 10,000) open at once to the raw echo port, each does one echo round trip
      tagged with its index; all must be served. Figures: time to connect and to serve, server RSS and its growth
      per connection. Then all close and the server's figures must return to baseline.
  (b) storm: N connections (default 50,000) connect and close (FIN) as fast as one client thread can, from source
      addresses spread over 127.0.0.1-4 so the client's TIME_WAITs don't exhaust its ports. Then the server must
      still serve, and its fd count, epoll.connections.active and epoll.connections.table return to baseline.
  (c) rst: N connections (default 20,000) to the HTTP port each send half a request and close with SO_LINGER 0
      (RST). Same checks.
  (d) emfile: a fresh server started with RLIMIT_NOFILE=--emfile-limit (default 512; the .NET runtime itself holds
      ~210 fds) gets echo connections until one is not served (the server hit EMFILE, the connection waits in the
      kernel's backlog); then: every served connection still echoes, the server's CPU over 5 s while exhausted
      stays under --cpu-bar % of a core (the transport backs off instead of spinning), and once clients close, the
      waiting and new connections are served and epoll.accept.backoffs counted it.
      (d2) emfile-warm: the same on a server that served one GET /slow?ms=1 first, so the runtime's timer thread
      already runs (a fresh process has to start it when the transport's back-off arms its first Timer).
      Both emfile parts run the server with DOTNET_gcServer=0: with Server GC (the sample's default) the .NET runtime
      aborts with "Out of memory." when fds run out, whatever the transport (--emfile-server-gc to see it).

  python3 stress/floods.py                      # all four, full size (~1-2 minutes)
  python3 stress/floods.py --only emfile
  python3 stress/floods.py --scale 0.2          # a fifth of the counts, for a quick check

Exit code 1 if any bar fails. Each part is bounded in time (--part-timeout, default 300 s).
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time

import stresslib as sl

# Socket, pipe and epoll fds must equal the baseline exactly. All fds may differ by a few more: the runtime opens an
# assembly (2 fds each) or a .pdb the first time some code runs, e.g. when an exception's stack trace is first logged.
FD_TOLERANCE = 2


class Bar:
    def __init__(self):
        self.failed: list[str] = []
        self.lines: list[str] = []

    def check(self, ok: bool, text: str) -> None:
        line = f"  [{'PASS' if ok else 'FAIL'}] {text}"
        print(line, flush=True)
        self.lines.append(line)
        if not ok:
            self.failed.append(text)

    def figure(self, text: str) -> None:
        line = f"  {text}"
        print(line, flush=True)
        self.lines.append(line)


def baseline(server: sl.Server) -> dict:
    """The figures after one round of every kind of request: .NET opens its assemblies (fds) as code first runs."""
    sl.echo_round_trip(server.echo_port, b"warm-up" * 100, timeout=10)
    for path in ("/plaintext", "/stats"):
        s = sl.connect(server.http_port)
        s.sendall(sl.http_request_bytes("GET", path))
        sl.HttpReader(s).read()
        s.close()
    # Settled: only the /stats request's own connection open (the warm-up's FINs are processed asynchronously).
    f = sl.wait_for(lambda: (lambda f: f if f["active"] in (1, None) else None)(sl.figures(server.pid, server.url)), 10, 0.2)
    time.sleep(0.5)
    return sl.figures(server.pid, server.url)


def back_to_baseline(bar: Bar, server: sl.Server, base: dict, timeout: float = 30.0) -> None:
    def settled():
        f = sl.figures(server.pid, server.url)
        ok = (f["active"] == base["active"] and f["table"] == base["table"]
              and f["io_fds"] == base["io_fds"] and abs(f["fds"] - base["fds"]) <= FD_TOLERANCE + 8)
        return f if ok else None

    t0 = time.monotonic()
    f = sl.wait_for(settled, timeout, 0.5)
    if f:
        bar.check(True, f"back to baseline in {time.monotonic() - t0:.1f} s: socket/pipe/epoll fds {f['io_fds']} "
                        f"(baseline {base['io_fds']}), all fds {f['fds']} (baseline {base['fds']}), "
                        f"active {f['active']}, table {f['table']}, threads {f['threads']}, RSS {f['rss_mb']} MB")
    else:
        f = sl.figures(server.pid, server.url)
        bar.check(False, f"not back to baseline after {timeout:.0f} s: socket/pipe/epoll fds {f['io_fds']} vs "
                         f"{base['io_fds']}, all fds {f['fds']} vs {base['fds']}, "
                         f"active {f['active']} vs {base['active']}, table {f['table']} vs {base['table']}")
        bar.figure(f"fds that differ: {sl.fd_diff(base['fd_targets'], f['fd_targets'])}")


def connect_spread(i: int, port: int) -> socket.socket:
    """Connects to the server's loopback address from source address 127.0.0.1-4 in turn (the whole 127.0.0.0/8 is
    the loopback interface's, ip(7)/ip-address(8)). The client closes first, so each connection leaves a TIME_WAIT
    (60 s, tcp(7)) holding its source port; with one source address, 50,000 connections in a few seconds would use
    up the ephemeral port range (ip_local_port_range, ~28,000 ports) and connect() fail with EADDRNOTAVAIL. bind()
    to a source address with port 0 picks a port free on that address, so four give four times the range. The spread
    is on the source, not the destination: the sample's raw ports listen on 127.0.0.1 only when --urls is loopback."""
    return socket.create_connection((sl.HOST, port), timeout=10, source_address=(f"127.0.0.{1 + i % 4}", 0))


def still_serves(bar: Bar, server: sl.Server) -> None:
    try:
        sl.echo_round_trip(server.echo_port, b"still there?" * 1000, timeout=10)
        s = sl.connect(server.http_port)
        s.sendall(sl.http_request_bytes("GET", "/plaintext"))
        resp = sl.HttpReader(s).read()
        s.close()
        bar.check(resp.status == 200 and resp.body == sl.PLAINTEXT, "server still serves (raw echo and GET /plaintext)")
    except Exception as e:  # noqa: BLE001
        bar.check(False, f"server still serves: {e!r}")


# ---------------------------------------------------------------------------------------------------------------


def part_concurrent(args, bar: Bar) -> None:
    n = int(10000 * args.scale) if args.concurrent is None else args.concurrent
    print(f"(a) {n} concurrent connections, one echo round trip each", flush=True)
    server = sl.Server(args.transport, nofile=200000, name="floods-concurrent", args=["--Kestrel:Transport:Epoll:Backlog", "4096"])
    try:
        base = baseline(server)
        deadline = time.monotonic() + args.part_timeout
        socks: list[socket.socket] = []
        t0 = time.monotonic()
        failed_connects = 0
        for i in range(n):
            if time.monotonic() > deadline:
                break
            try:
                s = connect_spread(i, server.echo_port)
                socks.append(s)
            except OSError:
                failed_connects += 1
        t_connect = time.monotonic() - t0
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            s.setblocking(False)
            s.send(b"%09d\n" % i)
            sel.register(s, selectors.EVENT_READ, [i, b""])
        pending = len(socks)
        wrong = 0
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                data = key.data
                try:
                    chunk = key.fileobj.recv(64)
                except OSError:
                    chunk = b""
                data[1] += chunk
                if len(data[1]) >= 10 or not chunk:
                    if data[1] != b"%09d\n" % data[0]:
                        wrong += 1
                    sel.unregister(key.fileobj)
                    pending -= 1
        t_served = time.monotonic() - t0
        time.sleep(0.5)
        during = sl.figures(server.pid, server.url)
        served = len(socks) - pending - wrong
        bar.figure(f"connected {len(socks)} in {t_connect:.1f} s ({failed_connects} failed), all round trips done "
                   f"{t_served:.1f} s after the first connect")
        rss_per = (during["rss_mb"] - base["rss_mb"]) * 2**20 / max(1, len(socks))
        # Kestrel's Sockets transport (--transport sockets) has no epoll.* counters: count its socket fds instead.
        counted = "active" if during["active"] is not None else "io_fds"
        bar.figure(f"server with {during[counted] - base[counted]} connections open: RSS {during['rss_mb']} MB "
                   f"(baseline {base['rss_mb']} MB, +{rss_per / 1024:.1f} KiB per connection), fds {during['fds']}, "
                   f"threads {during['threads']}, GC heap {during['gc_heap_mb']} MB")
        bar.check(served == n and failed_connects == 0 and wrong == 0,
                  f"{served} of {n} served ({pending} not answered, {wrong} wrong answers, {failed_connects} connect failures)")
        # fds within 2: the /stats request's own connection may still be open in one figure and closed in the other.
        slack = 0 if counted == "active" else 2
        bar.check(abs(during[counted] - base[counted] - len(socks)) <= slack,
                  f"{'epoll.connections.active' if counted == 'active' else 'socket/pipe/epoll fds'} {during[counted]} "
                  f"= baseline + {len(socks)}")
        t1 = time.monotonic()
        for s in socks:
            s.close()
        sel.close()
        back_to_baseline(bar, server, base, timeout=60)
        bar.figure(f"closing {len(socks)} took {time.monotonic() - t1:.1f} s to settle")
        still_serves(bar, server)
        bar.check(server.alive(), "server alive")
    finally:
        server.kill()


def part_storm(args, bar: Bar) -> None:
    n = int(50000 * args.scale) if args.storm is None else args.storm
    print(f"(b) connect/close storm: {n} connections (FIN)", flush=True)
    server = sl.Server(args.transport, nofile=200000, name="floods-storm")
    try:
        base = baseline(server)
        deadline = time.monotonic() + args.part_timeout
        t0 = time.monotonic()
        done = failed = 0
        for i in range(n):
            if time.monotonic() > deadline:
                break
            try:
                s = connect_spread(i, server.echo_port)
                s.close()
                done += 1
            except OSError:
                failed += 1
        dt = time.monotonic() - t0
        bar.figure(f"{done} connect+close in {dt:.1f} s ({done / dt:.0f}/s), {failed} connect failures")
        bar.check(done + failed == n, f"storm finished within {args.part_timeout} s")
        back_to_baseline(bar, server, base, timeout=60)
        stats = server.stats()
        bar.figure(f"accepted {stats['counters'].get('epoll.connections.accepted')}, closed by reason {stats.get('closedByReason')}")
        still_serves(bar, server)
        bar.check(server.alive(), "server alive")
    finally:
        server.kill()


def part_rst(args, bar: Bar) -> None:
    n = int(20000 * args.scale) if args.rst is None else args.rst
    print(f"(c) RST storm: {n} connections send half a request, then RST", flush=True)
    server = sl.Server(args.transport, nofile=200000, name="floods-rst")
    # Half the connections reset in the middle of a POST /echo body: Kestrel's own race on a reset mid-body (the
    # Sockets transport too, about 1 in 500 to 1 in 5,000 such resets; see tools/harness/logs.py) can throw from the
    # body's AdvanceTo. Expected; nothing else is.
    server.expect(*sl.KESTREL_BODY_RESET_RACE)
    try:
        base = baseline(server)
        deadline = time.monotonic() + args.part_timeout
        t0 = time.monotonic()
        done = failed = 0
        partial = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
        for i in range(n):
            if time.monotonic() > deadline:
                break
            try:
                s = socket.create_connection((sl.HOST, server.http_port), timeout=10)
                s.sendall(partial if i % 2 else partial[:30])  # half mid-body, half mid-headers
                sl.set_linger_rst(s)
                s.close()
                done += 1
            except OSError:
                failed += 1
        dt = time.monotonic() - t0
        bar.figure(f"{done} connect+partial request+RST in {dt:.1f} s ({done / dt:.0f}/s), {failed} failures")
        bar.check(done + failed == n, f"storm finished within {args.part_timeout} s")
        back_to_baseline(bar, server, base, timeout=60)
        stats = server.stats()
        bar.figure(f"accepted {stats['counters'].get('epoll.connections.accepted')}, closed by reason {stats.get('closedByReason')}")
        still_serves(bar, server)
        bar.check(server.alive(), "server alive")
    finally:
        server.kill()


def part_emfile(args, bar: Bar, warm: bool = False) -> None:
    limit = args.emfile_limit
    print(f"(d{'2' if warm else ''}) fd exhaustion: server with RLIMIT_NOFILE={limit}"
          + (", warmed first by one GET /slow?ms=1 (the runtime's timer thread already runs)" if warm else
             ", fresh process"), flush=True)
    # Workstation GC unless --emfile-server-gc: with Server GC the .NET runtime itself aborts ("Out of memory.", SIGABRT)
    # when fds run out, on either transport (its GC fails to open /proc/meminfo); see stress/README.md.
    env = {} if args.emfile_server_gc else {"DOTNET_gcServer": "0"}
    server = sl.Server(args.transport, nofile=limit, name=f"floods-emfile{'-warm' if warm else ''}", env=env)
    served: list[socket.socket] = []
    waiting: list[socket.socket] = []
    try:
        if warm:
            s = sl.connect(server.http_port)
            s.sendall(sl.http_request_bytes("GET", "/slow?ms=1"))
            sl.HttpReader(s).read()
            s.close()
        base = baseline(server)
        bar.figure(f"server fds at start: {base['fds']} of {limit}")
        deadline = time.monotonic() + args.part_timeout
        # Open echo connections one by one until one is not answered within 2 s: the server is out of fds.
        while time.monotonic() < deadline and len(served) < limit + 100:
            s = socket.create_connection((sl.HOST, server.echo_port), timeout=10)
            s.settimeout(2.0)
            s.sendall(b"ping")
            try:
                if sl.recv_exact(s, 4) != b"ping":
                    raise sl.Corrupt("wrong echo")
                served.append(s)
            except (socket.timeout, TimeoutError):
                waiting.append(s)
                break
        if not waiting:
            bar.check(False, "server never ran out of fds")
            return
        # A few more wait in the backlog.
        for _ in range(20):
            s = socket.create_connection((sl.HOST, server.echo_port), timeout=10)
            s.sendall(b"late")
            waiting.append(s)
        f = sl.proc_figures(server.pid)
        bar.figure(f"exhausted after {len(served)} served connections: server fds {f['fds']} of {limit}, "
                   f"{len(waiting)} connections waiting in the backlog")
        log = server.log_text()
        epoll = args.transport == "epoll"  # the back-off's log entry and counter are the epoll transport's own
        if epoll:
            bar.check("EMFILE" in log, "server logged the EMFILE back-off (event 101)")
        # Existing connections keep working.
        ok = 0
        for i, s in enumerate(served):
            s.settimeout(10)
            msg = b"%06d" % i
            try:
                s.sendall(msg)
                ok += sl.recv_exact(s, len(msg)) == msg
            except OSError:
                pass
        bar.check(ok == len(served), f"{ok} of {len(served)} existing connections still echo while exhausted")
        bar.check(server.alive(), "server alive while exhausted")
        cpu = sl.cpu_percent(server.pid, 5.0)
        bar.check(cpu < args.cpu_bar, f"server CPU while exhausted: {cpu:.1f}% of a core over 5 s (bar < {args.cpu_bar}%)")
        # Free fds: close half the served connections; the waiting ones must now be served, and new ones too.
        t0 = time.monotonic()
        half = len(served) // 2
        for s in served[:half]:
            s.close()
        served = served[half:]
        got = 0
        wait_deadline = time.monotonic() + 15
        for s in waiting:
            s.settimeout(max(0.1, wait_deadline - time.monotonic()))
            try:
                expect = b"ping" if got == 0 and s is waiting[0] else b"late"
                got += sl.recv_exact(s, 4) == expect
            except OSError:
                pass
        bar.check(got == len(waiting), f"{got} of {len(waiting)} connections that waited in the backlog served after fds were freed "
                                       f"({time.monotonic() - t0:.1f} s)")
        still_serves(bar, server)
        if epoll:
            stats = server.stats()
            bar.figure(f"epoll.accept.backoffs = {stats['counters']['epoll.accept.backoffs']}")
            bar.check(stats["counters"]["epoll.accept.backoffs"] > 0, "back-offs counted")
        for s in served + waiting:
            s.close()
        served, waiting = [], []
        back_to_baseline(bar, server, base)
        bar.check(server.alive(), "server alive")
    finally:
        for s in served + waiting:
            s.close()
        if not server.alive():
            bar.figure(f"server exited with {server.proc.returncode}; its log: {server.log_path}")
            for line in server.log_text().splitlines()[-6:]:
                bar.figure(f"  | {line}")
        server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated: concurrent,storm,rst,emfile,emfile-warm")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the connection counts")
    ap.add_argument("--concurrent", type=int)
    ap.add_argument("--storm", type=int)
    ap.add_argument("--rst", type=int)
    ap.add_argument("--emfile-limit", type=int, default=512)
    ap.add_argument("--emfile-server-gc", action="store_true",
                    help="keep the sample's Server GC for the emfile parts (the runtime then aborts when fds run out)")
    ap.add_argument("--cpu-bar", type=float, default=10.0)
    ap.add_argument("--part-timeout", type=float, default=300.0)
    ap.add_argument("--transport", default="epoll")
    args = ap.parse_args()
    sl.install_signal_handlers()
    sl.raise_nofile(200000)
    sl.build()
    parts = {"concurrent": part_concurrent, "storm": part_storm, "rst": part_rst, "emfile": part_emfile,
             "emfile-warm": lambda a, b: part_emfile(a, b, warm=True)}
    chosen = args.only.split(",") if args.only else list(parts)
    bar = Bar()
    t0 = time.monotonic()
    for name in chosen:
        t = time.monotonic()
        try:
            parts[name](args, bar)
        except Exception as e:  # noqa: BLE001
            bar.check(False, f"{name}: {type(e).__name__}: {e}")
        print(f"  ({name}: {time.monotonic() - t:.0f} s)", flush=True)
    print(f"floods: {len(bar.failed)} checks failed; {time.monotonic() - t0:.0f} s")
    for f in bar.failed:
        print(f"  FAILED: {f}")
    return 1 if bar.failed else 0


if __name__ == "__main__":
    sys.exit(sl.log_bar(main()))

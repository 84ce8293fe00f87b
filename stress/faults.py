#!/usr/bin/env python3
"""Fault-injected integrity runs: the sample under TRANSPORT_EPOLL_FAULTS, driven over HTTP and raw echo.

Per run (one seed): a server started with TRANSPORT_EPOLL_FAULTS="seed=S;rate=R" (R drawn from the seed in
0.01..0.2: EINTR, EAGAIN, short reads, 1-byte and partial writes, EMFILE/ECONNABORTED on accept), then at once:
  - HTTP POST /echo of random sizes up to 1 MiB (SHA-256 compared), on a keep-alive connection and fresh ones;
  - keep-alive GETs of /plaintext and /json (bodies compared);
  - a pipelined batch (GETs and a small POST /echo in one write; responses checked in order);
  - raw echo: concurrent connections sending random payloads in random chunks, half-closing, and checking that
    every byte comes back in order, then EOF.
The workload runs 3 rounds per server (--rounds). Bar: every byte arrives, nothing hangs (10 s per socket operation), the
server stays up, its log has no crash report and no fail: or crit: entry (from the transport, Kestrel or the sample)
that the injected faults do not explain (EXPECTED_LOG_FAILURES), and afterwards epoll.connections.active and epoll.connections.table return to their baseline.

With --resets (default: every run also does it) a second server gets "seed=S;rate=R;resets=0.001" (also
ECONNRESET/EPIPE/ENOBUFS): operations may fail, but only cleanly (reset, EOF, an error status): never a hang, never a
byte that was not sent, and the server's connection figures still return to baseline.

  python3 stress/faults.py --runs 200            # ~the 200-seed bar
  python3 stress/faults.py --quick               # 5 seeds, for CI
  python3 stress/faults.py --seed-start 17 --runs 1   # repeat one seed

Prints one line per run, the failing seeds with their reason, and "N runs, N passed". Exit code 1 if any failed.
Server logs of failing runs are kept in stress/.bin/logs/.
"""

from __future__ import annotations

import argparse
import http.client
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import stresslib as sl

OP_TIMEOUT = 10.0
ROUNDS = 3  # the workload runs this many times on each server, each time with new sizes
RUN_TIMEOUT = 120.0
# Errors the injected faults explain, as (regex over the log entry, or a predicate, why); any other fail: or crit:
# entry, from the transport, Kestrel or the sample, and any crash fails the run. Injected EINTR, EAGAIN, short reads and
# writes, EMFILE on accept are ordinary kernel behaviour the transport absorbs, and a peer's reset (ECONNRESET, EPIPE) is
# ordinary too: none of them explains an error. ENOBUFS on a send is a socket error: the transport closes the connection
# (warning 202) and completes its input with the error, so an endpoint reading the request body (/echo) throws it and
# Kestrel logs it as the application's (event 13; Sockets completes its input with the SocketException the same way),
# and Kestrel's request-body state is left mid-read (event 67 "Reading is already in progress" when it drains the body;
# once in 400 runs event 13 with ArgumentOutOfRangeException from the body's AdvanceTo). Those are explained only on a
# connection the transport reported the ENOBUFS for. With resets injected, Kestrel's own race on a reset mid-body
# (stresslib.KESTREL_BODY_RESET_RACE) is explained too.
def _kestrel_error_on_enobufs_connection(failure: sl.LogFailure, log: str) -> bool:
    return (failure.category == "Microsoft.AspNetCore.Server.Kestrel" and failure.event_id in (13, 67)
            and failure.connection_id is not None
            and f"Connection {failure.connection_id}: socket error ENOBUFS" in log)


EXPECTED_LOG_FAILURES: list[tuple] = [
    (_kestrel_error_on_enobufs_connection, "Kestrel errors on a connection an injected ENOBUFS failed"),
]


class Outcome:
    def __init__(self):
        self.ok = 0
        self.clean_failures = 0
        self.errors: list[str] = []  # failures that break the bar
        self.lock = threading.Lock()

    def record(self, name: str, fn, resets: bool) -> None:
        try:
            fn()
            with self.lock:
                self.ok += 1
        except sl.Corrupt as e:
            with self.lock:
                self.errors.append(f"{name}: CORRUPT {e}")
        except (socket.timeout, TimeoutError) as e:
            with self.lock:
                self.errors.append(f"{name}: HANG (no progress for {OP_TIMEOUT:.0f} s) {e!r}")
        except (ConnectionError, OSError, RuntimeError) as e:
            with self.lock:
                if resets:
                    self.clean_failures += 1
                else:
                    self.errors.append(f"{name}: FAILED {e!r}")


def workload(server: sl.Server, rng: random.Random, resets: bool) -> Outcome:
    out = Outcome()
    jobs = []
    port, echo = server.http_port, server.echo_port

    # HTTP: POST /echo on one keep-alive connection, random sizes up to 1 MiB (one large, the rest any size).
    sizes = [rng.randint(512 * 1024, 1 << 20)] + [rng.choice([0, 1, rng.randint(2, 4096), rng.randint(4096, 1 << 20)])
                                                  for _ in range(5)]
    bodies = [rng.randbytes(n) for n in sizes]

    def echo_keepalive():
        s = sl.connect(port, OP_TIMEOUT)
        try:
            reader = sl.HttpReader(s)
            for body in bodies:
                sl.http_echo(s, reader, body, OP_TIMEOUT)
        finally:
            s.close()

    jobs.append(("http-echo-keepalive", echo_keepalive))

    fresh = [rng.randbytes(rng.randint(1, 300 * 1024)) for _ in range(4)]
    for i, body in enumerate(fresh):
        def echo_fresh(body=body):
            s = sl.connect(port, OP_TIMEOUT)
            try:
                sl.http_echo(s, sl.HttpReader(s), body, OP_TIMEOUT)
            finally:
                s.close()

        jobs.append((f"http-echo-fresh-{i}", echo_fresh))

    # Keep-alive GETs.
    def gets():
        s = sl.connect(port, OP_TIMEOUT)
        try:
            reader = sl.HttpReader(s)
            for i in range(20):
                path, expected = ("/plaintext", sl.PLAINTEXT) if i % 2 == 0 else ("/json", sl.JSON)
                s.sendall(sl.http_request_bytes("GET", path))
                resp = reader.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: status {resp.status}")
                if resp.body != expected:
                    raise sl.Corrupt(f"GET {path}: body {resp.body[:60]!r}")
        finally:
            s.close()

    jobs.append(("http-keepalive-gets", gets))

    # A pipelined batch in one write: GETs and a POST /echo in the middle.
    post_body = rng.randbytes(rng.randint(1, 8192))
    batch = []
    for i in range(32):
        if i == 16:
            batch.append(("POST", "/echo", post_body))
        elif i % 3 == 0:
            batch.append(("GET", "/json", sl.JSON))
        else:
            batch.append(("GET", "/plaintext", sl.PLAINTEXT))

    def pipelined():
        s = sl.connect(port, OP_TIMEOUT)
        try:
            data = b"".join(sl.http_request_bytes(m, p, post_body if m == "POST" else None) for m, p, _ in batch)
            threading.Thread(target=lambda: _send_quietly(s, data), daemon=True).start()
            reader = sl.HttpReader(s)
            for i, (m, p, expected) in enumerate(batch):
                resp = reader.read()
                if resp.status != 200:
                    raise RuntimeError(f"pipelined #{i} {m} {p}: status {resp.status}")
                if resp.body != expected:
                    raise sl.Corrupt(f"pipelined #{i} {m} {p}: wrong body ({len(resp.body)} bytes)")
        finally:
            s.close()

    jobs.append(("http-pipelined", pipelined))

    # Raw echo: concurrent connections, random payloads in random chunks, half-close.
    for i in range(12):
        payload = rng.randbytes(rng.choice([1, rng.randint(2, 1024), rng.randint(1024, 512 * 1024)]))
        chunks = rng.randint(1, 16)
        seed = rng.getrandbits(32)

        def raw(payload=payload, chunks=chunks, seed=seed):
            sl.echo_round_trip(echo, payload, OP_TIMEOUT, chunks, random.Random(seed))

        jobs.append((f"raw-echo-{i}", raw))

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(out.record, name, fn, resets) for name, fn in jobs]
        deadline = time.monotonic() + RUN_TIMEOUT
        for f in futures:
            try:
                f.result(max(0.1, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - a job stuck past the run's bound
                out.errors.append(f"run did not finish within {RUN_TIMEOUT:.0f} s: {e!r}")
                break
    return out


def _send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass


def stats_retry(server: sl.Server, tries: int) -> dict:
    last = None
    for _ in range(tries):
        try:
            return server.stats(OP_TIMEOUT)
        except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:  # /stats' own connection may get a reset
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"/stats failed {tries} times: {last!r}")


def connection_figures(server: sl.Server, tries: int, transport: str) -> tuple:
    if transport != "epoll":
        # Kestrel's Sockets transport publishes no epoll.* counters: its socket, pipe and epoll fds are what a
        # connection leak would show (the /stats request's own connection is closed by then, or wait_for waits).
        return sl.figures(server.pid, server.url)["io_fds"], None
    c = stats_retry(server, tries)["counters"]
    return c["epoll.connections.active"], c["epoll.connections.table"]


def one_run(seed: int, resets: bool, transport: str) -> tuple[bool, str, dict]:
    rng = random.Random(seed)
    rate = round(rng.uniform(0.01, 0.2), 3)
    spec = f"seed={seed};rate={rate}" + (";resets=0.001" if resets else "")
    name = f"faults-{seed}{'-resets' if resets else ''}"
    info = {"seed": seed, "rate": rate, "resets": resets}
    try:
        server = sl.Server(transport, env={"TRANSPORT_EPOLL_FAULTS": spec}, name=name)
    except RuntimeError as e:
        return False, f"server did not start: {e}", info
    for pattern, why in EXPECTED_LOG_FAILURES + ([sl.KESTREL_BODY_RESET_RACE] if resets else []):
        server.expect(pattern, why)
    passed = False
    reasons: list[str] = []
    try:
        tries = 10 if resets else 3
        base_active, base_table = connection_figures(server, tries, transport)
        t0 = time.monotonic()
        info["ok"] = info["clean_failures"] = 0
        for _ in range(ROUNDS):
            out = workload(server, random.Random(rng.getrandbits(64)), resets)
            info["ok"] += out.ok
            info["clean_failures"] += out.clean_failures
            reasons += out.errors
            if out.errors or not server.alive():
                break
        info["seconds"] = round(time.monotonic() - t0, 2)
        if not server.alive():
            reasons.append(f"server exited with {server.proc.returncode}")
        else:
            # Every connection of the workload closed: active and table back to their baseline (the /stats
            # connection itself is the one active connection both times).
            figures = sl.wait_for(lambda: (lambda f: f if f == (base_active, base_table) else None)(
                connection_figures(server, tries, transport)), timeout=15, interval=0.25)
            if not figures:
                now = connection_figures(server, tries, transport)
                reasons.append(f"connections did not return to baseline: active/table {now} vs {(base_active, base_table)}")
        c = stats_retry(server, tries)["counters"]
        # 0 on Sockets: no counters there, and TRANSPORT_EPOLL_FAULTS injects nothing (the same workload, unfaulted).
        info["eagain"], info["partial"], info["backoffs"] = (c.get("epoll.eagain", 0), c.get("epoll.writes.partial", 0),
                                                             c.get("epoll.accept.backoffs", 0))
        verdict = server.log_verdict()
        info["log_failures"] = verdict.total
        info["log_explained"] = verdict.explained
        if not verdict.ok:
            reasons.append(f"server log: {verdict.describe()}")
        passed = not reasons
    except Exception as e:  # noqa: BLE001
        reasons.append(f"{type(e).__name__}: {e}")
    finally:
        server.kill()
        if passed:
            server.log_path.unlink(missing_ok=True)
    return passed, "; ".join(reasons), info


def main() -> int:
    global ROUNDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed-start", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="5 runs (CI)")
    ap.add_argument("--no-resets", action="store_true", help="skip the resets variant")
    ap.add_argument("--only-resets", action="store_true", help="only the resets variant")
    ap.add_argument("--parallel", type=int, default=2, help="seeds run at the same time (default 2)")
    ap.add_argument("--transport", default="epoll")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="workload rounds per server (default 3)")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="stop starting runs after this long")
    args = ap.parse_args()
    if args.quick:
        args.runs = 5
    ROUNDS = max(1, args.rounds)
    sl.install_signal_handlers()
    sl.build()

    variants = [] if args.only_resets else [False]
    if not args.no_resets:
        variants.append(True)
    work = [(seed, resets) for seed in range(args.seed_start, args.seed_start + args.runs) for resets in variants]
    t0 = time.monotonic()
    deadline = t0 + args.max_minutes * 60
    results: dict[tuple[int, bool], bool] = {}
    failures: list[str] = []
    clean_failures = 0
    ops = 0
    log_failures = 0
    log_explained: dict[str, int] = {}
    lock = threading.Lock()

    def task(item):
        nonlocal clean_failures, ops, log_failures
        seed, resets = item
        if time.monotonic() > deadline:
            return
        passed, reason, info = one_run(seed, resets, args.transport)
        with lock:
            results[item] = passed
            clean_failures += info.get("clean_failures", 0)
            ops += info.get("ok", 0) + info.get("clean_failures", 0)
            log_failures += info.get("log_failures", 0)
            for why, n in info.get("log_explained", {}).items():
                log_explained[why] = log_explained.get(why, 0) + n
            tag = "resets" if resets else "faults"
            line = (f"seed {seed:4d} {tag:6s} rate={info['rate']:<5} "
                    f"{'PASS' if passed else 'FAIL'} ops ok={info.get('ok', '-')} "
                    f"clean-failures={info.get('clean_failures', '-')} | server eagain={info.get('eagain', '-')} "
                    f"partial-writes={info.get('partial', '-')} accept-backoffs={info.get('backoffs', '-')} "
                    f"log-fail/crit={info.get('log_failures', '-')} | "
                    f"{info.get('seconds', '-')} s")
            if not passed:
                line += f"\n    seed {seed} ({tag}): {reason}"
                failures.append(f"seed {seed} ({tag}, TRANSPORT_EPOLL_FAULTS=\"seed={seed};rate={info['rate']}"
                                f"{';resets=0.001' if resets else ''}\"): {reason}")
            print(line, flush=True)

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        list(pool.map(task, work))

    elapsed = time.monotonic() - t0
    seeds_done = sorted({seed for seed, _ in results})
    seeds_passed = [s for s in seeds_done if all(results.get((s, r), True) for r in variants)]
    print()
    if failures:
        print("FAILING SEEDS:")
        for f in failures:
            print("  " + f)
        print(f"  (server logs in {sl.BIN.relative_to(sl.REPO)}/logs/)")
    skipped = args.runs - len(seeds_done)
    print(f"variants per run: {', '.join('resets' if r else 'faults' for r in variants)}; "
          f"{len(results)} server runs, {ops} client operations, {clean_failures} clean failures under resets, "
          f"{log_failures} fail/crit entries in server logs"
          f"{' (' + ', '.join(f'{n} x {why}' for why, n in log_explained.items()) + ')' if log_explained else ''}; "
          f"{elapsed:.0f} s" + (f"; {skipped} runs not started (--max-minutes)" if skipped else ""))
    print(f"{len(seeds_done)} runs, {len(seeds_passed)} passed")
    return 0 if len(seeds_passed) == len(seeds_done) == args.runs else 1


if __name__ == "__main__":
    sys.exit(sl.log_bar(main()))

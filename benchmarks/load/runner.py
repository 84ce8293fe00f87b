"""The runner of run.py: the plan (idle memory, resident servers and their session warm-up, then every load's
samples with the variants interleaved), each sample (warm-up, measured window, CPU accounting), the noise filter
(a noisy sample is measured again once, while the time budget allows), and restarts of servers that die."""

from __future__ import annotations

import json
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import loadgen
from loadgen import LOADS_BY_NAME, Load
from variants import BIN, Variant
import variants as variants_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from harness import REPO, noise, procfs, procs, sample  # noqa: E402
from harness.sample import ServerFailure  # noqa: E402

# Session warm-up of the servers without a JIT (nginx, the sample's Native AOT build): connections and pools only.
AOT_SESSION_WARMUP_S = 3
# The plaintext part of a .NET server's session warm-up runs as wrk runs of about this many seconds (session_warmup_plan).
PLAINTEXT_WARMUP_RUN_S = 5

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
        self.lua.write_text(loadgen.PIPELINE_LUA)
        self.samples = []  # every sample, kept or dropped
        self.events = []  # failures and restarts, as text
        self.sessions = []

    # One sample: a warm-up run, then the measured run with the CPU accounting around it.
    def command(self, load: Load, server, seconds: float) -> list:
        return loadgen.command(load, server, seconds, self.args.client_cpu, self.lua)

    def run_load(self, load: Load, server, warmup: float, window: float) -> dict:
        if warmup > 0:
            procs.run_bounded(self.command(load, server, warmup), timeout=warmup + 60)
        cmd = self.command(load, server, window)
        if load.tool == "fanout":
            code, out, err, cpu = self.run_fanout(cmd, server, window)
        else:
            w = noise.Window(server.pid, self.sibling_pids(server))
            code, out, err = procs.run_bounded(cmd, timeout=window + 20)
            cpu = w.close()
        r = loadgen.parse(load, out, window)
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

    def run_fanout(self, cmd: list, server, window: float) -> tuple:
        """tcpload fanout opens its 10,001 connections first and says so ("connected N"); the window (the server's
        CPU per line delivered) starts only then, so it measures the broadcasts, not the accepts."""
        proc = procs.spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first = proc.stdout.readline() if ready else ""
        w = noise.Window(server.pid, self.sibling_pids(server))
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        except OSError:
            pass  # it already ended (no connection): its output says why
        try:
            out, err = proc.communicate(timeout=window + 20)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            procs.kill_group(proc)
            out, err = proc.communicate()
            code = None
        procs.forget(proc)
        return code, first + (out or ""), err or "", w.close()

    def idle_memory(self, server, n: int) -> dict:
        """RSS growth of the server while n idle connections are open, per connection."""
        def hold(count: int, max_hold: float):
            proc = procs.spawn(loadgen.idle_command(server.http_port, count, max_hold, self.args.client_cpu),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([proc.stdout], [], [], max_hold + 5)
            line = proc.stdout.readline() if ready else ""
            m = re.match(r"connected (\d+)", line)
            return proc, int(m.group(1)) if m else 0

        def release(proc) -> dict:
            try:
                out, err = proc.communicate(input="\n", timeout=30)
            except subprocess.TimeoutExpired:
                procs.kill_group(proc)
                out = ""
            procs.forget(proc)
            lines = [l for l in out.splitlines() if l.startswith("{")]
            return json.loads(lines[-1]) if lines else {}

        # A first small batch so the accept path is jitted and its pools exist before the baseline.
        proc, _ = hold(min(200, n), 20)
        time.sleep(0.3)
        release(proc)
        time.sleep(0.5)
        fds0 = procfs.fd_count(server.pid)
        rss0 = procfs.rss_kib(server.pid)
        t0 = time.monotonic()
        proc, opened = hold(n, 60)
        # Wait until the server holds them all (its fd count), at most 15 s.
        deadline = time.monotonic() + 15
        accepted = 0
        while time.monotonic() < deadline and server.alive():
            accepted = procfs.fd_count(server.pid) - fds0
            if accepted >= opened:
                break
            time.sleep(0.1)
        time.sleep(self.args.idle_settle)
        rss1 = procfs.rss_kib(server.pid) if server.alive() else rss0
        accepted = procfs.fd_count(server.pid) - fds0
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

    def start_server(self, variant: Variant, echo: bool, what: str):
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", what)
        log_path = self.logdir / f"{tag}-{variant.name}-{len(self.sessions) + 1}.log"
        info = {"variant": variant.name, "what": f"{variant.name}, {what}", "log_problems": [],
                "log": str(log_path.relative_to(REPO))}
        self.sessions.append(info)
        server = variants_mod.create(variant, echo, self.args.server_cpu, self.workdir, log_path)
        server.info = info
        info["command"] = " ".join(shlex.quote(c) for c in server.cmd)
        try:
            server.wait_ready(self.args.ready_timeout)
        except BaseException:
            self.finish_server(server)
            raise
        info["ready_s"] = round(server.ready_s, 3)
        self.log(f"{variant.name} ({what}): ready in {server.ready_s:.2f} s, pid {server.pid}")
        return server

    def finish_server(self, server):
        server.stop()
        server.info["log_problems"] = server.problems()

    # ---- the plan, and what is left of it (for the time budget) ----

    @staticmethod
    def warm_key(load: Load) -> str:
        """The server code path a load exercises: its HTTP path (over HTTP/2: another path through Kestrel), or the
        raw echo handler."""
        if not load.http:
            return "chat" if load.tool == "fanout" else "echo"
        return "h2c:" + load.path if load.h2c else load.path

    def variant_loads(self, variant: Variant) -> list:
        """The measured loads (not idle memory) a variant runs: nginx runs the HTTP ones only."""
        if "--ProxyProtocol" in variant.args:
            return [l for l in self.loads if l.tool == "connrate"]
        return [l for l in self.loads if l.tool != "idle"
                and (variant.kind == "dotnet" or (l.http and not l.h2c and l.tool in ("wrk", "h2load")))]

    def session_warmup_plan(self, variant: Variant) -> list:
        """What a server runs once after it starts: (load, seconds). .NET servers need long: the JIT's tiering (tier 0,
        then instrumented, then optimized with PGO) goes on for 30-40 s of load on one core here, and until it is done
        both throughput and p99 measure the JIT: epoll-inline at 64 connections did 31k, 58k, 56k, 70k, 78k, 80k req/s
        in consecutive 10 s windows after start, p99 118, 3.4, 3.9, 1.7, 1.4, 1.1 ms; Sockets 30k to 53k, p99 28 to
        1.9 ms. So most of it is plaintext, then a few seconds of each other code path the run measures, so the
        tiering of those paths is done too. The plaintext part is several wrk runs of about 5 s, not one: each sample
        opens 64 new connections and closes them, and with one long run the code that accepts, sets up and closes a
        connection was still being compiled during the measured windows (DOTNET_JitDisasmSummary, epoll-inline after
        40 s of one run: 525 and 428 methods compiled in two following 10 s windows, p99 2.45 and 3.14 ms; after 8 runs
        of 5 s: 46 and 0, p99 1.71 and 1.42 ms). nginx, and the sample's Native AOT build (compiled ahead of time: no
        tiering to wait for), need only their connections and pools warm: a few seconds of plaintext."""
        total = self.args.session_warmup
        if total <= 0:
            return []
        if variant.kind != "dotnet" or variant.aot:
            return [(LOADS_BY_NAME["plaintext64"], min(total, AOT_SESSION_WARMUP_S))]
        if "--ProxyProtocol" in variant.args:
            # Its HTTP port refuses requests without a header: only connrate (which sends one) warms it up.
            return [(LOADS_BY_NAME["connrate"], total)]
        others = []
        for load in self.variant_loads(variant):
            key = self.warm_key(load)
            if key != "/plaintext" and key not in {self.warm_key(o) for o in others}:
                others.append(load)
        each = min(4, total // (len(others) + 2)) if others else 0
        plaintext = total - each * len(others)
        runs = max(1, plaintext // PLAINTEXT_WARMUP_RUN_S)
        chunks = [plaintext // runs + (1 if i < plaintext % runs else 0) for i in range(runs)]
        return [(LOADS_BY_NAME["plaintext64"], c) for c in chunks] + [(o, each) for o in others if each > 0]

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
        for idle in [l for l in self.loads if l.tool == "idle"]:
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

    def wait_quiet(self, server, limit: float) -> float:
        """Before running a dropped sample again: waits, at most limit seconds, for a 0.3 s slice in which the other
        processes use less than the threshold. Returns the seconds waited (0 when the machine was quiet at once)."""
        waited = noise.wait_quiet(server.pid, self.sibling_pids(server), self.args.noise_threshold, limit)
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

    def sibling_pids(self, server) -> list:
        return [s.pid for s in getattr(self, "servers", {}).values() if s is not server and s.alive()]

    def ensure_server(self, variant: Variant, before: str):
        """The variant's resident server, started (and warmed up) if it is not running, restarted if it died or
        stopped answering. None when it cannot be started: that is recorded once, and its samples fail fast."""
        if variant.name in self.broken:
            return None
        server = self.servers.get(variant.name)
        if server is not None:
            if server.alive() and sample.http_ok(server.http_port, timeout=3.0,
                                                 proxy_header=getattr(server, "proxy_protocol", False)):
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
            procs.run_bounded(self.command(load, server, seconds), timeout=seconds + 20)
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
            r = self.idle_memory(server, load.conns)
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

    def settle(self, server, limit: float = 2.0) -> float:
        """After a sample, waits (at most limit seconds) until the server just measured is idle, so that what it
        still does after the load (.NET's tiered JIT compiles in the background for up to a second or so) does not
        land in the next variant's window. Only this server is watched: other people's work does not make it wait."""
        return noise.settle(server.pid, self.args.noise_threshold, limit, alive=server.alive)

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

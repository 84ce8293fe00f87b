#!/usr/bin/env python3
"""Side-by-side load test of the epoll transport against Kestrel's Sockets transport.

Builds samples/WebApp in Release into a private folder, starts it once per variant (JIT, and with --aot the Native
AOT build too), server pinned to one CPU and the load generators (wrk, h2load, and tcpload.c compiled here) to the
other, runs every load's samples with the variants interleaved (A B C, A B C, ...), and writes a Markdown table,
the raw data as JSON and an SVG chart to benchmarks/load/results/. Samples during which other processes used the
machine are dropped and run again once.

  python3 benchmarks/load/run.py --quick          # about 2 minutes
  python3 benchmarks/load/run.py                  # about 8 minutes
  python3 benchmarks/load/run.py --loads plaintext64,echo --variants sockets,epoll-inline
  python3 benchmarks/load/run.py --quick --aot    # adds the Native AOT builds: sockets-aot, epoll-aot, ...

The parts: loadgen.py (the loads, their command lines and output parsers), variants.py (the servers), runner.py
(the plan, the samples, the noise filter, the time budget), report.py (tables, chart, files); processes, /proc,
the build and the sample server come from tools/harness/. See README.md next to this file. Python 3.9+, standard
library only. Linux only. Loopback only.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import loadgen
import report
import variants as variants_mod
from loadgen import LOADS, Load
from runner import AOT_SESSION_WARMUP_S, Runner
from variants import APP_DIR, AOT_DIR, BIN

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from harness import build, cli, noise, procs  # noqa: E402

HERE = Path(__file__).resolve().parent

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
    p.add_argument("--aot", action="store_true",
                   help="add the sample's Native AOT build beside each built-in .NET variant chosen (sockets-aot, "
                        "epoll-aot, epoll-inline-aot): published with -p:PublishAot=true (clang, lld), a 3 s session "
                        "warm-up instead of the JIT's; doubles the default time budget, and the AOT publish does not "
                        "count against it")
    p.add_argument("--rounds", type=int, help="rounds, interleaved (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, help="whole seconds of load before each window (default 1; 1 with --quick)")
    p.add_argument("--window", type=int, help="whole seconds measured per sample (default 3; 1 with --quick)")
    p.add_argument("--session-warmup", type=int,
                   help="whole seconds of load once per server start, mostly plaintext, a few seconds of each other "
                        "code path measured (default 40; 8 with --quick): the JIT's tiering takes that long")
    p.add_argument("--budget", type=float,
                   help="seconds the whole run may take (default 590; 115 with --quick; twice that with --aot): "
                        "dropped samples are run again only while the plan still fits; 0: no limit")
    noise.add_arguments(p)
    p.add_argument("--idle-conns", type=int, default=10000,
                   help="connections for the idle load (default 10000; idle5k always opens 5000)")
    p.add_argument("--idle-settle", type=float,
                   help="seconds between the server holding them all and reading its RSS (default 1; 0.5 quick)")
    p.add_argument("--no-build", action="store_true",
                   help="use the sample already in .bin/WebApp (and .bin/WebApp-aot with --aot)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: results/)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="measure nothing: write the table and chart again from a results JSON")
    args = p.parse_args(argv)
    defaults = {"rounds": (3, 1), "warmup": (1, 1), "window": (3, 1), "session_warmup": (40, 8), "budget": (590, 115),
                "idle_settle": (1.0, 0.5)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, (quick if args.quick else full) * (2 if key == "budget" and args.aot else 1))
    if args.rounds < 1 or args.window < 1 or args.warmup < 0 or args.session_warmup < 0:
        p.error("--rounds and --window must be at least 1, --warmup and --session-warmup not negative")
    return args


def main(argv=None) -> int:
    started = time.monotonic()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = cli.command_line("benchmarks/load/run.py", sys.argv[1:])

    log = cli.progress_log(started)

    if args.report:
        return report.report_only(args.report, args.out)
    if not sys.platform.startswith("linux"):
        raise SystemExit("run.py: Linux only (epoll, /proc, taskset)")

    # Loads and variants
    loads = cli.pick(args.loads, LOADS, "run.py", "load")
    idle_label = f"memory per idle connection, {args.idle_conns:,} connections"
    loads = [Load(l.name, idle_label, l.tool, args.idle_conns, unit=l.unit, cost_unit=l.cost_unit, http=False)
             if l.name == "idle" else l for l in loads]
    extra = [variants_mod.parse_variant(s) for s in args.variant]
    defaults = ["sockets", "epoll", "epoll-inline"] + (["nginx"] if args.nginx else [])
    variants = variants_mod.choose(args.variants, defaults, extra, "run.py")
    if args.aot:
        builtin = {v.name: v for v in variants_mod.BUILTIN_VARIANTS}
        names = {v.name for v in variants}
        twins = [builtin[variants_mod.aot_twin(v.name)] for v in variants
                 if variants_mod.aot_twin(v.name) in builtin and variants_mod.aot_twin(v.name) not in names]
        if not twins and not any(v.aot for v in variants):
            raise SystemExit("run.py: --aot: none of the chosen variants has a Native AOT build (those that do: "
                             + ", ".join(v.name for v in variants_mod.BUILTIN_VARIANTS if v.aot) + ")")
        # Each AOT variant right after its JIT one, so the report's columns pair them.
        variants = [x for v in variants for x in [v] + [t for t in twins if t.name == variants_mod.aot_twin(v.name)]]

    # Machine
    build.check_cpus(args.server_cpu, args.client_cpu, "run.py")
    _, hard = procs.raise_nofile()  # the soft limit to the hard one, inherited by the servers and load generators
    if any(l.tool == "idle" for l in loads) and hard != resource.RLIM_INFINITY and args.idle_conns + 512 > hard:
        raise SystemExit(f"run.py: {args.idle_conns} idle connections need more open files than the hard limit "
                         f"{hard} (ulimit -Hn) allows; use --idle-conns {max(100, hard - 1000)} or raise the limit")
    needs = [("taskset", "taskset (Debian package util-linux)"), ("dotnet", "dotnet (the .NET SDK 10)")]
    needs += loadgen.needs(loads)
    if any(v.kind == "nginx" for v in variants):
        needs.append((variants_mod.nginx_path(), "nginx, for --nginx (apt-get install nginx-light)"))
    if any(v.aot for v in variants) and not args.no_build:
        needs += [("clang", "clang, to link the Native AOT build (apt-get install clang)"),
                  ("ld.lld", "lld, to link the Native AOT build (apt-get install lld)")]
    build.check_tools(needs, "run.py", "(or leave out the loads and variants that need them: --loads, --variants)")

    args.out.mkdir(parents=True, exist_ok=True)
    lock = procs.hold_lock(BIN / "lock", "run.py: another run.py is running (benchmarks/load/.bin/lock); "  # noqa: F841
                                         "two at once would measure each other")

    # Ctrl+C and SIGTERM end the run through the finally below, which kills every child's process group.
    procs.interrupt_on_signals()

    workdir = Path(tempfile.mkdtemp(prefix="epoll-load-"))
    try:
        digests = {}
        budget_start = started
        for aot, app in ((False, APP_DIR), (True, AOT_DIR)):
            if not any(v.kind == "dotnet" and v.aot == aot for v in variants):
                continue
            if args.no_build:
                if not (app / "WebApp").is_file():
                    raise SystemExit(f"run.py: --no-build, but {app.relative_to(HERE)}/WebApp does not exist")
            else:
                t0 = time.monotonic()
                digests["aot" if aot else "jit"] = build.publish_sample(BIN, log, aot=aot, who="run.py")[1]
                if aot:
                    # The native compile and link take 1-5 minutes on 2 busy cores: outside the time budget, which
                    # is for measuring (the JIT build stays inside it, as it always was).
                    budget_start += time.monotonic() - t0
        if any(l.tool in ("pingpong", "bulk", "fanout", "idle") for l in loads):
            build.build_c(loadgen.TCPLOAD_SRC, loadgen.TCPLOAD, log, who="run.py")
        if any(l.tool == "connrate" for l in loads):
            build.build_c(loadgen.CONNRATE_SRC, loadgen.CONNRATE, log, who="run.py")
        runner = Runner(args, loads, variants, workdir, log, budget_start)
        estimate = runner.plan_seconds()
        log(f"plan: {len(loads)} loads × {len(variants)} variants × {args.rounds} round(s), "
            f"{args.warmup} s warm-up + {args.window} s window per sample: about {estimate / 60:.1f} min of measuring"
            + (f"; over the time budget of {args.budget:.0f} s (cut --rounds or --window)"
               if args.budget > 0 and time.monotonic() - budget_start + estimate > args.budget else ""))
        runner.run()

        # Results
        meta = {
            "command": command,
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "git": build.git_info(),
            "sources_digest": digests.get("jit"),
            "machine": build.machine_info(),
            "dotnet": build.tool_version(["dotnet", "--version"]),
            "tools": {t: (shutil.which(t) or "") for t in ("wrk", "h2load", "nginx", "gcc")},
            "sample_epoll_settings": build.sample_epoll_settings(AOT_DIR if all(v.aot for v in variants
                                                                                if v.kind == "dotnet") else APP_DIR),
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
        if any(v.aot for v in variants):
            meta["aot_sources_digest"] = digests.get("aot")
            meta["settings"]["aot_session_warmup_s"] = min(args.session_warmup, AOT_SESSION_WARMUP_S)
        md, chart = report.write_report(meta, loads, variants, runner.samples, args.out)
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
        procs.kill_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

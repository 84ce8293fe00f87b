"""The machinery the load runner (benchmarks/load/) and the stress scripts (stress/) share, in one place.

  procs    child processes: own process group, killed with it; PR_SET_PDEATHSIG; bounded runs; signal handlers
  procfs   /proc readings: a process's CPU time, RSS, fds, threads; the machine's busy time; disk reads
  noise    CPU accounting over a measured window (server, load generator, runner, everyone else), quiet waits
  build    the sample's private build (a snapshot of the sources, dotnet publish, JIT or Native AOT), C helpers,
           tool checks, what a report says about the machine and the sources
  sample   the sample server: start with its args and env, wait until it is ready, its log, /stats, stop
  logs     a server log's fail:/crit: entries and crash reports, and which of them a run explains
  cli      progress lines with the elapsed time, the command line for a report, picking named items

Callers import it with a sys.path entry relative to their own file (the repo's tools/ folder):

  sys.path.insert(0, str(Path(__file__).resolve().parents[N] / "tools"))
  from harness import procs, procfs, ...

Python 3.9+, standard library only, Linux only.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

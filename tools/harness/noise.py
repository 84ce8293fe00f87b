"""CPU accounting over a measured window, and waiting for the machine (or one server) to be quiet.

On a shared machine a window is only worth keeping when the other processes left the measured server's core alone.
'Others' is what is left of the machine's busy time once the server, the load generator (reaped children) and this
script are taken out; interrupt and softirq time in /proc/stat is charged to the process that was running, so
loopback networking done on behalf of the server or the client is not counted as others."""

from __future__ import annotations

import time

from . import procfs


class Window:
    """CPU accounting over one measurement: the server, the load generator (children reaped inside the window),
    this script, and the whole machine; 'others' is what is left. Idle sibling servers (other variants, up
    meanwhile) are part of 'others' (they would take CPU from the measured server just the same) and are also
    reported on their own: after a load, .NET's tiered JIT can go on compiling in the background for a second."""

    def __init__(self, server_pid: int, siblings=()):
        self.pid = server_pid
        self.siblings = list(siblings)
        self.t0 = time.monotonic()
        self.siblings0 = sum(procfs.cpu_seconds(p) for p in self.siblings)
        self.server0 = procfs.cpu_seconds(server_pid)
        self.machine0 = procfs.machine_busy_seconds()
        self.children0 = procfs.children_cpu_seconds()
        self.self0 = procfs.self_cpu_seconds()

    def close(self) -> dict:
        wall = time.monotonic() - self.t0
        server = procfs.cpu_seconds(self.pid) - self.server0
        machine = procfs.machine_busy_seconds() - self.machine0
        loadgen = procfs.children_cpu_seconds() - self.children0
        me = procfs.self_cpu_seconds() - self.self0
        others = max(0.0, machine - server - loadgen - me)
        siblings = sum(procfs.cpu_seconds(p) for p in self.siblings) - self.siblings0
        share = (lambda x: round(x / wall, 4) if wall > 0 else None)  # noqa: E731
        return {
            "wall_s": round(wall, 4),
            "server_cpu_s": round(server, 4),
            "loadgen_cpu_s": round(loadgen, 4),
            "runner_cpu_s": round(me, 4),
            "machine_busy_s": round(machine, 4),
            "others_cpu_s": round(others, 4),
            "server_core_share": share(server),
            "loadgen_core_share": share(loadgen),
            "others_core_share": share(others),
            "siblings_cpu_s": round(siblings, 4),
        }


def wait_quiet(server_pid: int, siblings, threshold: float, limit: float, slice_s: float = 0.3) -> float:
    """Waits, at most limit seconds (at least one slice), for a slice in which the other processes use at most
    threshold of one core. Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        w = Window(server_pid, siblings)
        time.sleep(slice_s)
        if w.close()["others_core_share"] <= threshold or time.monotonic() - t0 >= limit:
            break
    return time.monotonic() - t0


def settle(pid: int, threshold: float, limit: float, slice_s: float = 0.25, quiet_slices: int = 1,
           alive=lambda: True) -> float:
    """After a load: waits (at most limit seconds) until the process has used at most threshold of a core for
    quiet_slices slices in a row, so that what it still does (.NET's tiered JIT compiles in the background, in
    bursts) does not land in the next window. Only this process is watched: other people's work does not make it
    wait. Returns the seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit and alive() and quiet < quiet_slices:
        c0 = procfs.cpu_seconds(pid)
        time.sleep(slice_s)
        quiet = quiet + 1 if (procfs.cpu_seconds(pid) - c0) / slice_s <= threshold else 0
    return time.monotonic() - t0


def add_arguments(parser) -> None:
    """The options every benchmark shares: where the server and the load run, and how much of the machine others
    may use during a window."""
    parser.add_argument("--noise-threshold", type=float, default=0.10,
                        help="drop a sample when other processes used more than this share of one core "
                             "(default 0.10)")
    parser.add_argument("--server-cpu", type=int, default=0, help="the CPU the server is pinned to (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="the CPU the load is pinned to (default 1)")
    parser.add_argument("--ready-timeout", type=float, default=30.0,
                        help="seconds for a server to answer GET /plaintext after it starts (default 30)")

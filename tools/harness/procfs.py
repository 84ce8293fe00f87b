"""Readings from /proc (proc(5)): what one process used and holds, and what the whole machine did."""

from __future__ import annotations

import os
import re
import resource
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/PID/stat), in clock ticks. The command
    name (field 2) may hold spaces and parentheses: the fields are counted from the last ')'. Raises OSError once
    the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process in seconds; 0 once it is gone (its end is reported elsewhere)."""
    try:
        return cpu_ticks(pid) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_percent(pid: int, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`, in percent."""
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_ticks(pid)
    return 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0)


def status_fields(pid: int) -> dict:
    """VmRSS (KiB) and Threads of /proc/PID/status; {} once the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_kib"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    return status_fields(pid).get("rss_kib", 0)


def fd_count(pid: int) -> int:
    """Open fds of a process; -1 once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def proc_figures(pid: int) -> dict:
    """RSS (bytes), open fds, threads and CPU ticks (utime+stime) of a process; zeros once it is gone."""
    out = {"rss": 0, "fds": 0, "threads": 0, "cpu_ticks": 0}
    status = status_fields(pid)
    out["rss"] = status.get("rss_kib", 0) * 1024
    out["threads"] = status.get("threads", 0)
    out["fds"] = max(0, fd_count(pid))
    try:
        out["cpu_ticks"] = cpu_ticks(pid)
    except (OSError, IndexError, ValueError):
        pass
    return out


def fd_targets(pid: int) -> dict:
    """What the process's fds point at, counted: {"socket": 5, "/usr/share/dotnet/.../System.Linq.dll": 2, ...}."""
    out: dict = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        target = re.sub(r"^(socket|pipe|anon_inode:\[?[a-z_]+\]?).*", r"\1", target)
        out[target] = out.get(target, 0) + 1
    return out


def fd_diff(before: dict, after: dict) -> str:
    keys = sorted(set(before) | set(after))
    parts = [f"{k}: {before.get(k, 0)}->{after.get(k, 0)}" for k in keys if before.get(k, 0) != after.get(k, 0)]
    return ", ".join(parts) or "no difference"


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy, all CPUs (user, nice, system, irq, softirq; not idle, iowait or
    steal), from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (the load generators, once they ended)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def disk_read_kib() -> int:
    """KiB the whole machine read from block devices so far (/proc/vmstat pgpgin)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("pgpgin "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

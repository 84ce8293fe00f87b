"""Child processes: each in its own process group (start_new_session), killed with its group when it is stopped,
when the script ends, on Ctrl+C or SIGTERM; and, should the script itself be killed with SIGKILL, by the kernel
(PR_SET_PDEATHSIG, prctl(2))."""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import resource
import signal
import subprocess
import time

_children: list = []
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def libc():
    """The C library, for the few calls Python has no wrapper for (prctl, mmap + mlock)."""
    return _libc


def spawn(cmd, nofile: int | None = None, **kwargs) -> subprocess.Popen:
    """Starts cmd in a process group of its own, registered so that kill_all() stops it. nofile: its
    RLIMIT_NOFILE (soft and hard), set in the child before exec."""

    def child_setup():
        # If this script dies without cleaning up (SIGKILL), the kernel kills the child too.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=child_setup, **kwargs)
    _children.append(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    """proc has been reaped: kill_all() must not signal its (reusable) process group id any more."""
    if proc in _children:
        _children.remove(proc)


def kill_group(proc: subprocess.Popen, grace: float = 0.0):
    """Stops a child and its process group (SIGTERM and up to grace seconds first, then SIGKILL); returns its exit
    code (None if it could not be reaped). The group is signalled only while its leader is not yet reaped, so its id
    cannot belong to anyone else by then."""
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
    forget(proc)
    return proc.returncode


def kill_all() -> None:
    """Every child still registered, with its group."""
    for proc in list(_children):
        kill_group(proc)


def run_bounded(cmd, timeout: float, **kwargs) -> tuple:
    """Runs a command to its end (a load generator is bounded by its own duration); kills it past timeout.
    Returns (returncode or None when killed, stdout, stderr) as text."""
    return run_many([cmd], timeout, **kwargs)[0]


def run_many(cmds: list, timeout: float, **kwargs) -> list:
    """Starts every command at once, waits for all (killing what is left at the deadline); [(code, out, err)]."""
    procs = [spawn(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, **kwargs)
             for c in cmds]
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            code = None
        forget(proc)
        results.append((code, out or "", err or ""))
    return results


def raise_nofile(n: int | None = None) -> tuple:
    """Raises this process's soft RLIMIT_NOFILE to n (to the hard limit when n is None; root may raise the hard
    limit too), which its children inherit. Returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if n is None else max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def interrupt_on_signals() -> None:
    """SIGINT (also when started with it ignored, as a background job), SIGTERM and SIGHUP raise KeyboardInterrupt,
    so the script ends through its finally blocks, which stop the children."""

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def exit_on_signals(cleanup=kill_all) -> None:
    """For scripts without one finally around everything: cleanup() at exit, and on SIGINT/SIGTERM/SIGHUP cleanup()
    then exit with 128 + the signal."""
    atexit.register(cleanup)

    def on_signal(signum, frame):
        cleanup()
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def hold_lock(path, message: str):
    """An exclusive flock on path for as long as the returned file stays open (the script's life); SystemExit with
    message when another process holds it: two benchmarks at once would measure each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SystemExit(message)
    return lock

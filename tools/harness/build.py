"""The sample's private build, and what else a run needs on the machine.

The sample is built from a snapshot of the sources (src/Transport.Epoll, samples/WebApp and the root build files)
copied into the caller's .bin folder: others may keep editing and building the working tree meanwhile, and what was
measured is what was copied. Only changed files are rewritten, so MSBuild's incremental build keeps working, and the
publish is skipped when the snapshot is the one the output was last published from. Native AOT builds get a
snapshot of their own (their obj/ holds a different restore: the runtime pack and the ILCompiler)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, procs

SNAPSHOT_ROOT_FILES = ["Directory.Build.props", "Directory.Packages.props", "global.json", ".editorconfig",
                       "NuGet.config", "nuget.config"]
SNAPSHOT_DIRS = ["src/Transport.Epoll", "samples/WebApp"]
SKIP_DIRS = {"bin", "obj", "TestResults", ".vs", ".idea"}
DOTNET_ENV = {"DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1", "DOTNET_SKIP_FIRST_TIME_EXPERIENCE": "1"}


def sync_snapshot(snapshot: Path) -> str:
    """Copies the sources the sample's build reads into snapshot/, rewriting only the files that changed, deleting
    the ones that went away. Returns a digest of what was copied."""
    digest = hashlib.sha256()
    wanted = set()
    sources = [REPO / f for f in SNAPSHOT_ROOT_FILES if (REPO / f).is_file()]
    for d in SNAPSHOT_DIRS:
        for root, dirs, files in os.walk(REPO / d):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
            sources.extend(Path(root) / f for f in sorted(files))
    for src in sources:
        rel = src.relative_to(REPO)
        dst = snapshot / rel
        wanted.add(rel)
        data = src.read_bytes()
        digest.update(str(rel).encode() + b"\0" + data)
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for root, dirs, files in os.walk(snapshot):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for f in files:
            path = Path(root) / f
            if path.relative_to(snapshot) not in wanted:
                path.unlink()
    return digest.hexdigest()[:16]


def app_dir(bin_dir: Path, aot: bool = False) -> Path:
    """Where publish_sample puts the sample: bin/WebApp (JIT) or bin/WebApp-aot (Native AOT)."""
    return bin_dir / ("WebApp-aot" if aot else "WebApp")


def publish_sample(bin_dir: Path, log, aot: bool = False, who: str = "harness") -> tuple:
    """Publishes samples/WebApp (Release) from a snapshot into app_dir(bin_dir, aot); returns (the folder, the
    sources' digest). The JIT build is framework-dependent with an app host (bin/WebApp/WebApp runs it; WebApp.dll
    is there too); the AOT build is `-p:PublishAot=true` (clang and lld link it), bin/WebApp-aot/WebApp is the native
    binary. Warnings do not fail it (-p:TreatWarningsAsErrors=false): a benchmark or a stress run should not stop on
    a style rule; the ordinary build and CI hold that bar. A lock keeps two scripts sharing bin_dir from publishing
    at once; the publish is skipped when the sources are those of the last successful one."""
    out = app_dir(bin_dir, aot)
    snapshot = bin_dir / ("src-aot" if aot else "src")
    stamp = out / ".published-from"
    bin_dir.mkdir(parents=True, exist_ok=True)
    flavour = "Native AOT" if aot else "JIT"
    with open(bin_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = sync_snapshot(snapshot)
        if (out / "WebApp").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
            log(f"build: {out.relative_to(REPO)} is up to date ({flavour}, sources {digest})")
            return out, digest
        with contextlib.suppress(FileNotFoundError):
            stamp.unlink()  # a publish that fails half-way must not look finished next time
        cmd = ["dotnet", "publish", str(snapshot / "samples/WebApp/WebApp.csproj"), "-c", "Release", "-o", str(out),
               "-nologo", "-v", "q", "-p:TreatWarningsAsErrors=false", "-p:UseAppHost=true"]
        if aot:
            cmd.append("-p:PublishAot=true")
        log(f"build: copied src/Transport.Epoll and samples/WebApp into {snapshot.relative_to(REPO)}, "
            f"dotnet publish -c Release ({flavour}) -> {out.relative_to(REPO)}")
        t0 = time.monotonic()
        code, stdout, stderr = procs.run_bounded(cmd, timeout=1500 if aot else 600, env=dict(os.environ, **DOTNET_ENV),
                                                 cwd=str(snapshot))
        if code != 0:
            sys.stderr.write(stdout[-6000:] + stderr[-4000:])
            raise SystemExit(f"{who}: dotnet publish ({flavour}) of samples/WebApp "
                             f"{'timed out' if code is None else 'failed'} (the output is above)"
                             + ("; Native AOT needs clang and lld (apt-get install clang lld)" if aot else ""))
        stamp.write_text(digest + "\n")
        log(f"build: done in {time.monotonic() - t0:.1f} s (sources {digest})")
        return out, digest


def build_c(src: Path, exe: Path, log, who: str = "harness", source_text: str | None = None) -> None:
    """gcc -O2 src -> exe, again only when the source is newer (or, given source_text, when src's text differs:
    it is written first)."""
    if source_text is not None and (not src.is_file() or src.read_text() != source_text):
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(source_text)
    if exe.is_file() and exe.stat().st_mtime >= src.stat().st_mtime:
        return
    code, out, err = procs.run_bounded(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], timeout=120)
    if code != 0:
        raise SystemExit(f"{who}: gcc failed on {src.name}:\n{out}{err}")
    log(f"build: {exe.name} compiled")


def check_tools(needs: list, who: str, hint: str = "") -> None:
    """needs: [(program, what to say when it is missing)]. Stops with the list of what is missing; installs
    nothing."""
    missing = [say for program, say in needs if not (shutil.which(program) or os.path.exists(program))]
    if missing:
        raise SystemExit(f"{who}: missing, nothing installed:\n  " + "\n  ".join(missing) + (f"\n{hint}" if hint else ""))


def json_with_comments(text: str):
    """appsettings.json allows // and /* */ comments and trailing commas; json does not."""
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def sample_epoll_settings(app: Path):
    """The Kestrel:Transport:Epoll section of a built sample's appsettings.json: what an epoll server runs with
    besides the arguments it is given."""
    try:
        settings = json_with_comments((app / "appsettings.json").read_text())
        return settings.get("Kestrel", {}).get("Transport", {}).get("Epoll", {})
    except (OSError, ValueError, AttributeError) as e:
        return {"unreadable": str(e)}


def git_info() -> dict:
    """The commit, and whether src/ or samples/ had uncommitted changes."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO)] + list(a), capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    status = git("status", "--porcelain", "--", "src", "samples")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(status)}


def machine_info() -> dict:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "affinity": sorted(os.sched_getaffinity(0))}


def tool_version(cmd: list, timeout: float = 60) -> str:
    """First line of a tool's version output ('' when it does not run)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


def check_cpus(server_cpu: int, client_cpu: int, who: str) -> None:
    cpus = os.sched_getaffinity(0)
    if server_cpu == client_cpu or server_cpu not in cpus or client_cpu not in cpus:
        raise SystemExit(f"{who}: --server-cpu {server_cpu} and --client-cpu {client_cpu} must be two "
                         f"different CPUs of {sorted(cpus)}")

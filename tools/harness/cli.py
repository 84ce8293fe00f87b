"""What the scripts' command lines share: progress lines with the elapsed time, picking named items from a list."""

from __future__ import annotations

import shlex
import sys
import time


def progress_log(started: float):
    """log(text): one line on stderr, '[  12.3s] text', seconds since started (time.monotonic())."""

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    return log


def command_line(script: str, argv: list) -> str:
    """How the run was started, for the report: 'python3 benchmarks/load/run.py --quick'."""
    return f"python3 {script}" + "".join(" " + shlex.quote(a) for a in argv)


def pick(names: str | None, items: list, who: str, what: str) -> list:
    """The items (each with a .name) named in a comma-separated list, in the list's own order; all of them when
    names is empty. SystemExit naming the unknown ones and the known ones."""
    if not names:
        return list(items)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {item.name for item in items}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"{who}: unknown {what}(s) {', '.join(unknown)}; known: "
                         + ", ".join(item.name for item in items))
    return [item for item in items if item.name in wanted]

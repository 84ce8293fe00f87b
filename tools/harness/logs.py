"""A server log's errors: the console logger's fail:/crit: entries (with their indented message and exception
lines), the runtime's own crash reports, nginx's [error] and worse; and which of them a run explains."""

from __future__ import annotations

import re

# The console logger's header of an entry ("fail: Category[EventId]", its message on the indented lines after it), and
# what the runtime prints when the process dies (an unhandled exception, Environment.FailFast).
_FAILURE_HEADER = re.compile(r"^(?:(?P<level>fail|crit): (?P<category>\S+?)\[(?P<event>\d+)\]"
                             r"|(?P<crash>Unhandled exception\.|Process terminated\.).*)$")
_NGINX_ERROR = re.compile(r"\[(error|crit|alert|emerg)\]")


class LogFailure:
    """One fail:/crit: entry of the server's log, or the runtime's own report of a crash."""
    __slots__ = ("level", "category", "event_id", "text")

    def __init__(self, level: str, category: str, event_id: int, text: str):
        self.level, self.category, self.event_id, self.text = level, category, event_id, text

    @property
    def summary(self) -> str:
        """The header and the first line of the message: what a report prints."""
        return " ".join(line.strip() for line in self.text.splitlines()[:2])[:300]

    def matches(self, pattern: str) -> bool:
        return re.search(pattern, self.text, re.S) is not None

    @property
    def connection_id(self) -> str | None:
        """Kestrel's connection id the entry names, if any."""
        m = re.search(r'Connection id "([^"]+)"', self.text)
        return m.group(1) if m else None


def log_failures(text: str) -> list:
    """Every fail:/crit: entry (with its indented message and exception lines), every crash report and every nginx
    [error] (or worse) line in a log."""
    out: list = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FAILURE_HEADER.match(lines[i])
        if not m:
            if _NGINX_ERROR.search(lines[i]):
                out.append(LogFailure("error", "nginx", 0, lines[i]))
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith((" ", "\t")) or (m.group("crash") and lines[j])):
            j += 1
        block = "\n".join(lines[i:j])
        if m.group("crash"):
            out.append(LogFailure("crash", "runtime", 0, block))
        else:
            out.append(LogFailure(m.group("level"), m.group("category"), int(m.group("event")), block))
        i = j
    return out


def problem_lines(text: str) -> list:
    """The log's errors as one line each (header and first lines of the message), for a report."""
    return [" | ".join(line.strip() for line in f.text.splitlines()[:4])[:600] for f in log_failures(text)]


def first_problem_tail(text: str, lines: int = 12) -> str:
    """A server's output for a failure message: from its first error on if it has one (including the sample's own
    'WebApp: ...' start-up errors), else the end."""
    all_lines = text.splitlines()
    for i, line in enumerate(all_lines):
        if _FAILURE_HEADER.match(line) or "Unhandled exception" in line or _NGINX_ERROR.search(line) \
                or (line.startswith("WebApp: ") and "transport=" not in line):
            return "\n".join(all_lines[i:i + lines])
    return "\n".join(all_lines[-lines:])


class LogVerdict:
    """The server log's errors split into those an expectation explains (what the run provoked on purpose, each with
    its reason) and those nothing explains (which fail the run). An expectation is (regex over the entry, why) or
    (callable(entry, the whole log text) -> bool, why), for an entry that another line of the log explains."""

    def __init__(self, text: str, expected: list | None = None):
        self.explained: dict = {}
        self.unexplained: list = []
        failures = log_failures(text)
        self.total = len(failures)

        def matches(failure: LogFailure, pattern) -> bool:
            return pattern(failure, text) if callable(pattern) else failure.matches(pattern)

        for failure in failures:
            why = next((why for pattern, why in expected or [] if matches(failure, pattern)), None)
            if why is None:
                self.unexplained.append(failure)
            else:
                self.explained[why] = self.explained.get(why, 0) + 1

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def describe(self, limit: int = 3) -> str:
        """One line: the counts, then the first unexplained entries."""
        parts = [f"{self.total} fail/crit entries, {len(self.unexplained)} unexplained"]
        parts += [f"{n} x {why}" for why, n in self.explained.items()]
        text = "; ".join(parts)
        for failure in self.unexplained[:limit]:
            text += f"\n      unexplained: {failure.summary}"
        return text


# Kestrel's own race, on the Sockets transport too: a client that resets in the middle of a request body can leave the
# body reader's positions stale, and the endpoint's next AdvanceTo throws (about 1 in 500 such resets).
KESTREL_BODY_RESET_RACE = (
    r"^fail: Microsoft\.AspNetCore\.Server\.Kestrel\[13\].*\n\s+System\.ArgumentOutOfRangeException: .*"
    r"(MessageBody\.TrackConsumedAndExaminedBytes|Http1ContentLengthMessageBody\.AdvanceTo)",
    "Kestrel's race when a client resets mid-body (Sockets too)")

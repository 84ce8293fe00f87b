"""The report of run.py: medians over rounds with [min–max], ratios of medians, the details table, the Problems
section, the chart (requests/s against connections), and the files: results/latest.md, latest.json, plaintext.svg.
Also --report: all of it again from a saved results JSON, measuring nothing."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from loadgen import Load
from variants import Variant

def fmt_rate(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MB/s":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if unit == "bytes/conn":
        return f"{value / 1024:.2f} KiB" if value >= 1024 else f"{value:.0f} B"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 1e3:
        return f"{value / 1e3:.2f}k"
    return f"{value:.0f}"


def fmt_num(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def by_cell(samples, loads, variants):
    """(load, variant, its samples) for every load and variant that has samples, in table order."""
    for load in loads:
        for v in variants:
            mine = [s for s in samples if s["load"] == load.name and s["variant"] == v.name]
            if mine:
                yield load, v, mine


def summarize(samples, loads, variants) -> dict:
    cells = {}
    for load, v, mine in by_cell(samples, loads, variants):
        kept_all = [s for s in mine if not s["dropped"]]
        measured = [s for s in kept_all if s.get("rate") is not None]
        # Samples that were noisy twice are kept, but only used when the cell has no clean sample at all.
        clean = [s for s in measured if not s.get("noisy")]
        noisy_kept = len(measured) - len(clean)
        only_noisy = not clean and bool(measured)
        kept = clean or measured
        rates = [s["rate"] for s in kept if s.get("rate") is not None]
        cells[(load.name, v.name)] = {
            "median": median_or_none(rates),
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "n": len(rates),
            "dropped": sum(1 for s in mine if s["dropped"]),
            "noisy_kept": noisy_kept,
            "only_noisy": only_noisy,
            "p50_ms": median_or_none(s.get("p50_ms") for s in kept),
            "p99_ms": median_or_none(s.get("p99_ms") for s in kept),
            "cost": median_or_none(s.get("cost") for s in kept),
            "server_share": median_or_none(s.get("server_core_share") for s in kept),
            "loadgen_share": median_or_none(s.get("loadgen_core_share") for s in kept),
            "others_share": median_or_none(s.get("others_core_share") for s in kept),
            # Failures count wherever they happened, in noisy and dropped samples too.
            "errors": sum(s.get("errors") or 0 for s in mine),
            "non2xx": sum(s.get("non2xx") or 0 for s in mine),
            "failures": sorted({s["failure"] for s in mine if s.get("failure")}),
        }
    return cells


def ratio_columns(variants) -> list:
    names = [v.name for v in variants]
    cols = []
    if "sockets" in names:
        cols += [(v.name, "sockets") for v in variants if v.name not in ("sockets", "nginx")]
    if "sockets-aot" in names:
        # Native AOT against Native AOT too: what the transport gains when neither side has a JIT.
        cols += [(v.name, "sockets-aot") for v in variants if v.aot and v.name != "sockets-aot"]
    if "nginx" in names:
        cols += [(v.name, "nginx") for v in variants if v.kind == "dotnet" and v.transport == "epoll"]
    return cols


def markdown(meta, loads, variants, cells) -> str:
    names = [v.name for v in variants]
    ratios = ratio_columns(variants)
    out = [f"# Load test: epoll transport vs Sockets, {meta['finished_utc']}", ""]
    out.append(f"`{meta['command']}` · git {meta['git']['commit'][:10]}"
               f"{' + uncommitted changes' if meta['git']['dirty'] else ''} · {meta['machine']['cpu']}, "
               f"{meta['machine']['cpus']} CPUs, Linux {meta['machine']['kernel']} · .NET SDK {meta['dotnet']} · "
               f"server on CPU {meta['settings']['server_cpu']}, load generator on CPU "
               f"{meta['settings']['client_cpu']} · {meta['settings']['rounds']} round(s), variants interleaved per load, "
               f"{meta['settings']['warmup_s']:g} s warm-up + {meta['settings']['window_s']:g} s window per sample · "
               f"run took {meta['elapsed_s'] / 60:.1f} min")
    out.append("")
    out.append("Median [min–max] over rounds; ratios of medians; p99 in ms; server CPU time per unit of work "
               "(µs per request or round trip, ms per GB for bulk). ‡: the load generator used ≥ 90% of its core, "
               "so the server may be able to do more. *: no clean sample, these numbers were taken while other processes were busy. ⚠: errors, "
               "see Problems. Memory per idle connection: lower is better (server RSS growth / connections).")
    out.append("")
    head = ["load"] + names + [f"{a} ÷ {b}" for a, b in ratios] + \
           ["p99 ms (" + " / ".join(names) + ")", "server CPU per op (" + " / ".join(names) + ")"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for load in loads:
        if not any((load.name, n) in cells for n in names):
            continue
        row = [f"{load.label} ({load.unit})"]
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                row.append("n/a")
                continue
            text = fmt_rate(c["median"], load.unit)
            if c["n"] > 1:
                text += f" [{fmt_rate(c['min'], load.unit)}–{fmt_rate(c['max'], load.unit)}]"
            if c["loadgen_share"] is not None and c["loadgen_share"] >= 0.9:
                text += " ‡"
            if c["only_noisy"]:
                text += " *"
            if c["errors"] or c["non2xx"] or c["failures"]:
                text += " ⚠"
            row.append(text)
        for a, b in ratios:
            ca, cb = cells.get((load.name, a)), cells.get((load.name, b))
            if ca and cb and ca["median"] and cb["median"]:
                row.append(f"{ca['median'] / cb['median']:.2f}×")
            else:
                row.append("—")
        row.append(" / ".join(fmt_num(cells[(load.name, n)]["p99_ms"], 2) if (load.name, n) in cells else "—"
                              for n in names))
        row.append(" / ".join(fmt_num(cells[(load.name, n)]["cost"], 1) if (load.name, n) in cells else "—"
                              for n in names) + (f" {load.cost_unit}" if load.cost_unit else ""))
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if meta.get("chart"):
        out.append(f"![requests/s against connections, wrk plaintext]({meta['chart']})")
        out.append("")
    out.append("## Details")
    out.append("")
    out.append("| load | variant | median [min–max] | p50 ms | p99 ms | server CPU per op | server CPU (% of a core) "
               "| load-gen CPU (% of a core) | others (% of a core) | errors / non-2xx | samples used (noisy unused, dropped) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if not c:
                continue
            pct = lambda x: "—" if x is None else f"{x * 100:.0f}%"  # noqa: E731
            span = fmt_rate(c["median"], load.unit) + (f" [{fmt_rate(c['min'], load.unit)}–"
                                                       f"{fmt_rate(c['max'], load.unit)}]" if c["n"] > 1 else "")
            unit = "per connection" if load.unit == "bytes/conn" else load.unit
            out.append(f"| {load.name} | {n} | {span} {unit} | {fmt_num(c['p50_ms'], 3)} | "
                       f"{fmt_num(c['p99_ms'], 2)} | {fmt_num(c['cost'], 1)} {load.cost_unit} | "
                       f"{pct(c['server_share'])} | {pct(c['loadgen_share'])} | {pct(c['others_share'])} | "
                       f"{c['errors']} / {c['non2xx']} | {c['n']}{' noisy' if c['only_noisy'] else ''} "
                       f"({0 if c['only_noisy'] else c['noisy_kept']}, {c['dropped']}) |")
    out.append("")
    noise = meta["noise"]
    out.append(f"Noise filter: a sample is dropped when the other processes of the machine (all busy CPU time in "
               f"/proc/stat minus the server, the load generator and this runner) used more than "
               f"{noise['threshold'] * 100:.0f}% of one core during its window, and run once more. "
               f"A second noisy sample is kept but used only where a cell has no clean one (marked *). "
               f"{noise['dropped']} of {noise['samples']} samples dropped; {noise['noisy_kept']} noisy twice"
               + (f"; {noise['noisy_not_rerun']} noisy but not run again because the time budget "
                  f"({meta['settings'].get('budget_s', 0):.0f} s) was spent" if noise.get("noisy_not_rerun") else "")
               + ".")
    out.append("")
    problems = []
    for load in loads:
        for n in names:
            c = cells.get((load.name, n))
            if c and (c["errors"] or c["non2xx"] or c["failures"]):
                what = []
                if c["errors"]:
                    what.append(f"{c['errors']} errors")
                if c["non2xx"]:
                    what.append(f"{c['non2xx']} non-2xx responses")
                what += c["failures"]
                problems.append(f"- ⚠ {load.name} on {n}: " + "; ".join(what))
    for e in meta["events"]:
        problems.append("- ⚠ " + e.splitlines()[0])
    for s in meta["sessions"]:
        if s.get("log_problems"):
            problems.append(f"- ⚠ {s.get('what', s['variant'])}: the server logged {len(s['log_problems'])} "
                            f"error line(s), first: `{s['log_problems'][0][:300]}` (whole output: `{s['log']}`)")
    if problems:
        out.append("## Problems")
        out.append("")
        out += problems
        out.append("")
    if any(v.aot for v in variants):
        s = meta["settings"]
        out.append(f"Native AOT variants (`-aot`): the sample published with `dotnet publish -p:PublishAot=true`; with "
                   f"no JIT there is no tiering to wait for, so their servers get a {s.get('aot_session_warmup_s', 3):g} s "
                   f"session warm-up instead of the JIT builds' {s.get('session_warmup_s', 0):g} s, and the same "
                   f"per-sample warm-up.")
        out.append("")
    if meta.get("sample_epoll_settings"):
        out.append("The sample's appsettings.json, `Kestrel:Transport:Epoll` (under the variants' own overrides): `"
                   + json.dumps(meta["sample_epoll_settings"], separators=(", ", ": ")) + "`.")
        out.append("")
    out.append("Variants: " + "; ".join(f"**{v.name}**: {v.description}"
                                        + (f" (`{' '.join(v.args)}`)" if v.args else "") for v in variants) + ".")
    out.append("")
    return "\n".join(out)


def svg_chart(loads, variants, cells, title: str, subtitle: str = "") -> str | None:
    """requests/s against connections (wrk plaintext), one line per variant, log-scale x axis. Hand-drawn SVG."""
    points = {}
    xs = sorted({l.conns for l in loads if l.tool == "wrk" and l.path == "/plaintext" and l.pipeline == 1})
    for v in variants:
        pts = []
        for l in loads:
            if l.tool == "wrk" and l.path == "/plaintext" and l.pipeline == 1:
                c = cells.get((l.name, v.name))
                if c and c["median"]:
                    pts.append((l.conns, c["median"], c["min"], c["max"]))
        if pts:
            points[v.name] = sorted(pts)
    if not points or len(xs) < 2:
        return None
    width, height = 720, 440
    left, right, top, bottom = 80, 170, 56, 60
    pw, ph = width - left - right, height - top - bottom
    ymax_raw = max(p[3] for pts in points.values() for p in pts)
    step = 10 ** math.floor(math.log10(ymax_raw)) if ymax_raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if ymax_raw / (m * step) <= 8:
            step *= m
            break
    ymax = math.ceil(ymax_raw * 1.05 / step) * step
    lx0, lx1 = math.log2(xs[0]), math.log2(xs[-1])

    def px(x):
        inset = 24  # keep the end points off the axes
        return left + inset + (math.log2(x) - lx0) / (lx1 - lx0) * (pw - 2 * inset)

    def py(y):
        return top + ph - y / ymax * ph

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>',
           f'<text x="{left + pw / 2}" y="39" text-anchor="middle" font-size="11" fill="#555">{esc(subtitle)}</text>']
    y = 0.0
    while y <= ymax + 1e-9:
        svg.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#e0e0e0"/>')
        svg.append(f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{f"{y / 1000:g}k" if y else "0"}'
                   f'</text>')
        y += step
    for x in xs:
        svg.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
        svg.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{x}</text>')
    svg.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>')
    svg.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>')
    svg.append(f'<text x="{left + pw / 2}" y="{height - 18}" text-anchor="middle">connections (wrk, log scale)</text>')
    svg.append(f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + ph / 2})">requests/s (median; bars: min–max)</text>')
    for i, (name, pts) in enumerate(points.items()):
        color = colors[i % len(colors)]
        dash = ' stroke-dasharray="6 4"' if name == "nginx" else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(m):.1f}" for j, (x, m, _, _) in enumerate(pts))
        svg.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, m, lo, hi in pts:
            if hi is not None and lo is not None and hi > lo:
                svg.append(f'<line x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" '
                           f'stroke="{color}" stroke-width="1.5"/>')
            svg.append(f'<circle cx="{px(x):.1f}" cy="{py(m):.1f}" r="3.5" fill="{color}"/>')
        ly = top + 10 + i * 22
        svg.append(f'<line x1="{left + pw + 20}" y1="{ly}" x2="{left + pw + 48}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        svg.append(f'<circle cx="{left + pw + 34}" cy="{ly}" r="3.5" fill="{color}"/>')
        svg.append(f'<text x="{left + pw + 56}" y="{ly + 4}">{esc(name)}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def write_report(meta: dict, loads: list, variants: list, samples: list, out: Path) -> tuple:
    """latest.md, latest.json and plaintext.svg in out/, from the samples; returns (markdown, whether a chart)."""
    cells = summarize(samples, loads, variants)
    s = meta["settings"]
    chart = svg_chart(loads, variants, cells, "wrk plaintext: requests/s against connections",
                      f"server on 1 core · {meta['finished_utc']} · git {meta['git']['commit'][:10]}"
                      f"{'+' if meta['git']['dirty'] else ''} · {s['rounds']} round(s) × {s['window_s']} s")
    meta = dict(meta)
    meta.pop("chart", None)
    if chart:
        (out / "plaintext.svg").write_text(chart)
        meta["chart"] = "plaintext.svg"
    md = markdown(meta, loads, variants, cells)
    (out / "latest.md").write_text(md)
    data = dict(meta, variants=[vars(v) for v in variants], loads=[vars(l) for l in loads],
                summary=[dict(load=k[0], variant=k[1], **v) for k, v in cells.items()], samples=samples)
    (out / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return md, bool(chart)


def report_only(path: Path, out: Path) -> int:
    """--report: the table, chart and JSON again from a results JSON, without measuring (after a change to the
    report code, or to put a saved run back as latest)."""
    data = json.loads(path.read_text())
    loads = [Load(**d) for d in data["loads"]]
    variants = [Variant(**d) for d in data["variants"]]
    meta = {k: v for k, v in data.items() if k not in ("loads", "variants", "summary", "samples")}
    out.mkdir(parents=True, exist_ok=True)
    md, _ = write_report(meta, loads, variants, data["samples"], out)
    print(md)
    return 0

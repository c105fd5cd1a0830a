#!/usr/bin/env python3
"""Tables and charts of saved bench results: one renderer, so the README, the charts and the JSON agree.

The benches save everything they measured as JSON (``--json``): ``bench_servers.py`` (echo mode and
``--files`` mode) and ``bench_codec.py``.  This module turns such a file into

* text tables (what ``bench_servers.py`` prints), markdown tables and the issue-13 target checks;
* charts: the server chart (req/s and server CPU per request, every run's min-max as an error bar, failed runs
  marked, the echo fast path and the general path in separate panels), the file-download chart, and the codec
  chart (the extension's speed over each other row, as ratios on a log axis, every point labelled).

Usage::

    python bench/report.py RESULTS.json                      # print the tables (markdown with --markdown)
    python bench/report.py RESULTS.json --plot CHART.png     # draw the chart of that file
    python bench/report.py --update README.md bench/README.md
    python bench/report.py --check README.md bench/README.md

``--update`` rewrites every generated block of those markdown files from its JSON, ``--check`` exits 1 when
one differs.  A block is whatever stands between ``<!-- report KIND PATH -->`` and ``<!-- /report -->``, each
on a line of its own; PATH is relative to the markdown file; KIND is one of ``servers-text``,
``servers-summary``, ``servers-targets``, ``files-summary``, ``codec-summary``, ``instructions-summary``.
Needs only the standard library, and matplotlib for charts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, Callable

NOISE_CORES = 0.25  # other processes using more than this (in CPUs) during a window get the row flagged
FAST = "fast"
GENERAL = "general"
PATH_TITLES = {
    FAST: "echo fast path",
    GENERAL: "general path: bytes.upper() per frame",
}
PATH_NOTES = {
    FAST: "fastframe's echo relays whole checked frames from the codec's memory, no object per frame; "
    "the peers parse and call an identity function per frame",
    GENERAL: "every server calls bytes.upper() per frame and frames its result; the load generator "
    "checks that every reply is its request upper-cased",
}
GiB = 1 << 30
MiB = 1 << 20


# -- formatting ---------------------------------------------------------------------------------------------


def fmt_bytes(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits - 1}f}" if x >= 1 else f"{x:.{digits}f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def kind_of(data: dict[str, Any]) -> str:
    if "scenarios" in data:
        return "servers"
    if "sections" in data:
        return "codec"
    if "file_size" in data.get("meta", {}):
        return "files"
    if "rows" in data and "command" in data:
        return "instructions"
    if "echo" in data and "downloads" in data:
        return "tls"
    raise ValueError("not a bench result file (no 'scenarios', 'sections', 'echo' or 'meta.file_size')")


# -- the server bench ---------------------------------------------------------------------------------------


def ok_runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in row.get("runs", []) if r.get("ok")]


def spread(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """Min and max of ``key`` over the row's successful runs (None if there is none)."""
    values = [r[key] for r in ok_runs(row) if r.get(key, -1) >= 0]
    return (min(values), max(values)) if values else None


def failed_note(row: dict[str, Any]) -> str:
    """'2 of 5 runs failed' (or '') -- a chosen run says nothing about the runs that never finished."""
    runs = row.get("runs", [])
    bad = len(runs) - len(ok_runs(row))
    return f"{bad} of {len(runs)} runs failed" if bad and row.get("chosen") else ""


def scenario_title(data: dict[str, Any], key: str) -> str:
    return str(data["scenarios"][key]["title"])


def paths_of(rows: list[dict[str, Any]]) -> list[str]:
    return [p for p in (FAST, GENERAL) if any(r.get("path", FAST) == p for r in rows)]


def servers_text(data: dict[str, Any]) -> str:
    """The tables bench_servers.py prints: per scenario and path, every row with its ratios."""
    rows = data["results"]
    out: list[str] = []
    width = max(len(r["label"]) for r in rows) + 1
    head = (
        f"{'server':<{width}} {'req/s':>9} {'MB/s':>7} {'p50 us':>8} {'p99 us':>8} {'CPU us/req':>10} "
        f"{'srv CPU':>7} {'lg CPU':>6} {'x req/s':>7} {'x CPU':>6}"
    )
    for key in data["scenarios"]:
        for path in paths_of(rows):
            section = [r for r in rows if r["scenario"] == key and r.get("path", FAST) == path]
            if not section:
                continue
            base = "fastframe select" + (" --upper" if path == GENERAL else "")
            out += ["", f"{scenario_title(data, key)} -- {PATH_TITLES[path]} (x: / {base})", head, "-" * len(head)]
            for r in section:
                c = r["chosen"]
                if r["status"] == "skipped":
                    out.append(f"{r['label']:<{width}} skipped: {r['reason']}")
                    continue
                if c is None:
                    out.append(f"{r['label']:<{width}} FAILED: {r['reason']}")
                    continue
                noisy = "~" if c.get("other_cpu_cores", 0) > NOISE_CORES else " "
                out.append(
                    f"{r['label']:<{width}} {c['req_per_s']:>9,.0f} {fmt_num(c['payload_mb_per_s']):>7} "
                    f"{fmt_num(c['latency_us']['p50']):>8} {fmt_num(c['latency_us']['p99']):>8} "
                    f"{fmt_num(c['cpu_us_per_req']):>10} {c['server_cpu_util'] * 100:>6.0f}% "
                    f"{c['loadgen_cpu_util'] * 100:>5.0f}% {fmt_ratio(r.get('req_ratio')):>7} "
                    f"{fmt_ratio(r.get('cpu_ratio')):>6}{noisy}"
                )
                if r["reason"]:
                    out.append(f"{'':<{width}}   note: {r['reason']}")
    return "\n".join(out[1:] if out and out[0] == "" else out)


def servers_summary(data: dict[str, Any]) -> str:
    """Markdown: one table per path, one row per server, 'req/s, CPU us/req' per scenario."""
    rows = data["results"]
    keys = list(data["scenarios"])
    names: list[tuple[str, str, str]] = []
    for r in rows:
        item = (r.get("path", FAST), r["server"], r["label"])
        if item not in names:
            names.append(item)
    by = {(r["scenario"], r["server"]): r for r in rows}
    out: list[str] = []
    for path in paths_of(rows):
        cols = " | ".join(
            f"({k}) {fmt_bytes(data['scenarios'][k]['size'])}, depth {data['scenarios'][k]['depth']}: req/s, CPU µs/req"
            for k in keys
        )
        if out:
            out.append("")
        out.append(f"**{PATH_TITLES[path][0].upper() + PATH_TITLES[path][1:]}** ({PATH_NOTES[path]}):")
        out.append("")
        out.append(f"| server | {cols} |")
        out.append("|---" * (len(keys) + 1) + "|")
        for p, name, label in names:
            if p != path:
                continue
            cells = []
            for k in keys:
                r = by.get((k, name))
                if r is None:
                    cells.append("-")
                    continue
                c = r["chosen"]
                if r["status"] == "skipped":
                    cells.append("skipped")
                elif c is None:
                    cells.append("**FAILED**")
                else:
                    cell = f"{c['req_per_s']:,.0f}, {fmt_num(c['cpu_us_per_req'])}"
                    if c.get("other_cpu_cores", 0) > NOISE_CORES:
                        cell += " ~"
                    note = failed_note(r)
                    if note:
                        cell += f" ({note})"
                    cells.append(f"**{cell}**" if name in ("select", "select-upper") else cell)
            shown = f"**{label}**" if name in ("select", "select-upper") else label
            out.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(out)


#: issue 13's targets: (what, scenario, metric, row, reference row, "ge"/"le", bound)
TARGETS = [
    ("engine (select --upper) vs uvloop Protocol, req/s", "a", "req_per_s", "select-upper", "uvloop-upper", "ge", 1.0),
    ("engine (select --upper) vs uvloop Protocol, CPU/req", "b", "cpu_us_per_req", "select-upper", "uvloop-upper",
     "le", 0.8),
    ("engine (select --upper) vs uvloop Protocol, CPU/req", "c", "cpu_us_per_req", "select-upper", "uvloop-upper",
     "le", 0.8),
    ("aio FrameProtocol vs hand-parsed Protocol, uvloop, req/s", "b", "req_per_s", "aio-protocol-uvloop",
     "uvloop-upper", "ge", 1.5),
    ("aio FrameProtocol vs hand-parsed Protocol, uvloop, req/s", "a", "req_per_s", "aio-protocol-uvloop",
     "uvloop-upper", "ge", 1.0),
    ("aio streams vs readexactly, uvloop, req/s", "b", "req_per_s", "aio-streams-uvloop", "uvloop-streams-upper",
     "ge", 2.0),
    ("aio streams vs readexactly, asyncio, req/s", "b", "req_per_s", "aio-streams-asyncio", "asyncio-streams-upper",
     "ge", 2.0),
    ("aio frames_received vs hand-parsed Protocol, uvloop, req/s", "b", "req_per_s", "aio-batch-uvloop",
     "uvloop-upper", None, None),
    ("aio FrameProtocol vs hand-parsed Protocol, asyncio, req/s", "b", "req_per_s", "aio-protocol-asyncio",
     "asyncio-protocol-upper", None, None),
    ("aio FrameProtocol vs hand-parsed Protocol, uvloop, CPU/req", "b", "cpu_us_per_req", "aio-protocol-uvloop",
     "uvloop-upper", None, None),
]  # fmt: skip


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target whose two rows were measured: the ratio of the chosen runs, and whether it holds."""
    by = {(r["scenario"], r["server"]): r for r in data["results"]}
    out = []
    for what, key, metric, row, ref, op, bound in TARGETS:
        a, b = by.get((key, row)), by.get((key, ref))
        if not a or not b or not a.get("chosen") or not b.get("chosen") or key not in data["scenarios"]:
            continue
        x, y = a["chosen"][metric], b["chosen"][metric]
        if x is None or y is None or x <= 0 or y <= 0:
            continue
        ratio = x / y
        met = None if op is None else (ratio >= bound if op == "ge" else ratio <= bound)
        out.append({"what": what, "scenario": key, "metric": metric, "row": row, "reference": ref, "ratio": ratio,
                    "target": None if op is None else f"{'>=' if op == 'ge' else '<='} {bound:g}x", "met": met,
                    "values": [x, y]})  # fmt: skip
    return out


def targets_text(data: dict[str, Any], markdown: bool = False) -> str:
    rows = targets(data)
    if not rows:
        return ""
    unit = {"req_per_s": "req/s", "cpu_us_per_req": "µs/req" if markdown else "us/req"}
    lines = []
    if markdown:
        lines += ["| scenario | comparison | ratio | target | |", "|---|---|---|---|---|"]
    for t in rows:
        verdict = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        vals = f"{fmt_num(t['values'][0])} / {fmt_num(t['values'][1])} {unit[t['metric']]}"
        if markdown:
            lines.append(f"| ({t['scenario']}) | {t['what']} ({vals}) | {t['ratio']:.2f}x | {t['target'] or '-'} | "
                         f"{verdict} |")  # fmt: skip
        else:
            lines.append(f"({t['scenario']}) {t['what']:<58} {t['ratio']:>5.2f}x  target {t['target'] or '-':<8} "
                         f"{verdict:<6}  ({vals})")  # fmt: skip
    return "\n".join(lines)


def plot_servers(data: dict[str, Any], png: str) -> str | None:
    """Bars: the chosen (median) run; whiskers: min-max of every successful run; failed rows marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    meta = data["meta"]
    rows = data["results"]
    keys = list(data["scenarios"])
    colours = {"fastframe": "#f28e2b", "fastframe-py": "#ffbe7d", "fastframe-aio": "#e15759", "c": "#59595c",
               "peer": "#7ea6c9"}  # fmt: skip
    paths = paths_of(rows)
    panels = [(p, m) for p in paths for m in ("req_per_s", "cpu_us_per_req")]
    counts = {p: len({r["server"] for r in rows if r.get("path", FAST) == p}) for p in paths}
    heights = [max(2.0, 0.3 * counts[p] + 1.1) for p, _ in panels]
    fig, axes = plt.subplots(len(panels), len(keys), figsize=(4.8 * len(keys) + 2.2, sum(heights) + 1.6),
                             squeeze=False, gridspec_kw={"height_ratios": heights})  # fmt: skip
    for col, key in enumerate(keys):
        for row_i, (path, metric) in enumerate(panels):
            ax = axes[row_i][col]
            servers: list[tuple[str, str, str]] = []
            for r in rows:
                if r.get("path", FAST) == path and (r["server"], r["label"], r["group"]) not in servers:
                    servers.append((r["server"], r["label"], r["group"]))
            by = {r["server"]: r for r in rows if r["scenario"] == key and r.get("path", FAST) == path}
            ys = list(range(len(servers)))
            vals, lo, hi, labels, cols = [], [], [], [], []
            for name, label, group in servers:
                r = by.get(name)
                c = r["chosen"] if r else None
                v = c[metric] if c and c[metric] >= 0 else 0.0
                s = spread(r, metric) if r and c else None
                vals.append(v)
                lo.append(v - s[0] if s else 0.0)
                hi.append(s[1] - v if s else 0.0)
                labels.append(label)
                cols.append(colours.get(group, "#999999"))
            top = max([v + h for v, h in zip(vals, hi)] + [1e-9])
            ax.barh(ys, vals, color=cols, edgecolor=["#b2182b" if n in ("select", "select-upper") else "none"
                                                      for n, _, _ in servers], linewidth=2.0)  # fmt: skip
            ax.errorbar(vals, ys, xerr=[lo, hi], fmt="none", ecolor="#222222", elinewidth=1, capsize=2.5)
            for y, v, h, (name, _, _) in zip(ys, vals, hi, servers):
                r = by.get(name)
                if r is None:
                    continue
                if r["status"] == "skipped":
                    ax.text(top * 0.01, y, "skipped: " + r["reason"][:60], va="center", fontsize=7, color="#555555")
                elif not r["chosen"]:
                    ax.text(top * 0.01, y, "FAILED: " + r["reason"][:60], va="center", fontsize=7, color="#b2182b")
                elif v > 0:
                    c = r["chosen"]
                    note = ""
                    if metric == "req_per_s":
                        note = f"  {c['server_cpu_util']:.0%} CPU" + (" ~" if c.get("other_cpu_cores", 0) > NOISE_CORES
                                                                       else "")  # fmt: skip
                    text = f"{v:,.0f}" if metric == "req_per_s" else f"{v:.2f}"
                    ax.text(v + h + top * 0.01, y, text + note, va="center", fontsize=7)
                    if failed_note(r):  # the bar is a real run, but not every run finished
                        ax.text(v + h + top * 0.01, y + 0.38, failed_note(r), va="center", fontsize=6.5,
                                color="#b2182b")  # fmt: skip
            ax.set_yticks(ys)
            ax.set_yticklabels([lb if col == 0 else "" for lb in labels], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlim(0, top * (1.5 if metric == "req_per_s" else 1.3))
            ax.tick_params(axis="x", labelsize=7)
            if metric == "req_per_s":
                ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:,.0f}k" if x else "0"))
            what = "req/s (higher is better)" if metric == "req_per_s" else "server CPU µs/request (lower is better)"
            title = f"{PATH_TITLES[path]}: {what}"
            if row_i == 0:
                title = f"{scenario_title(data, key)}\n{title}"
            ax.set_title(title, fontsize=8.5)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"fastframe server bench, {meta['date']} - {meta['cpu_count']} CPUs, {meta.get('pinning_short', '')}; "
        f"{meta['duration']:g} s per run; bar: the median-req/s run of {meta['repeat']}, whiskers: min-max of the "
        f"runs\n"
        + "".join(f"{PATH_TITLES[p].split(':')[0]}: {PATH_NOTES[p]}\n" for p in paths)
        + f"'N% CPU': the server's CPU use in the window (below ~95%: it was not saturated); '~': other processes "
        f"used > {NOISE_CORES:g} CPU meanwhile",
        fontsize=8.5,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return None


# -- the file-download bench --------------------------------------------------------------------------------


def file_size_of(data: dict[str, Any], row: dict[str, Any]) -> int:
    return int(row.get("file_size") or row.get("size") or data["meta"]["file_size"])


def files_summary(data: dict[str, Any]) -> str:
    rows = data["results"]
    sizes = sorted({file_size_of(data, r) for r in rows})
    out: list[str] = []
    for size in sizes:
        group = [r for r in rows if file_size_of(data, r) == size]
        base = next((r["chosen"]["seconds"] for r in group if r["server"].startswith("fastframe") and r.get("chosen")),
                    None)  # fmt: skip
        if out:
            out.append("")
        if len(sizes) > 1:
            out += [f"{fmt_bytes(size)}:", ""]
        out += ["| server + client | s/GiB | seconds (median, min-max) | vs fastframe |", "|---|---|---|---|"]
        for r in group:
            c = r.get("chosen")
            label = f"**{r['label']}**" if r["server"].startswith("fastframe") else r["label"]
            if r["status"] == "skipped":
                out.append(f"| {label} | skipped: {r['reason']} | | |")
                continue
            if not c:
                out.append(f"| {label} | **FAILED**: {r['reason']} | | |")
                continue
            times = [x["seconds"] for x in ok_runs(r)]
            ratio = c["seconds"] / base if base else None
            vs = "1.00" if ratio is not None and abs(ratio - 1) < 1e-12 else (
                "-" if ratio is None else f"{ratio:.2f}x slower" if ratio > 1 else f"{1 / ratio:.2f}x faster")  # fmt: skip
            note = failed_note(r)
            out.append(f"| {label} | {c['seconds'] / (size / GiB):.3f} | {c['seconds']:.3f} ({min(times):.3f}-"
                       f"{max(times):.3f}){' ' + note if note else ''} | {vs} |")  # fmt: skip
    return "\n".join(out)


def plot_files(data: dict[str, Any], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    rows = data["results"]
    sizes = sorted({file_size_of(data, r) for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes) + 1.5, 0.55 * max(3, len(rows) // len(sizes))
                                                     + 2.2), squeeze=False)  # fmt: skip
    for col, size in enumerate(sizes):
        ax = axes[0][col]
        group = [r for r in rows if file_size_of(data, r) == size]
        ys = list(range(len(group)))
        vals, lo, hi, labels = [], [], [], []
        for r in group:
            c = r.get("chosen")
            times = [x["seconds"] for x in ok_runs(r)] if c else []
            v = c["seconds"] if c else 0.0
            vals.append(v)
            lo.append(v - min(times) if times else 0.0)
            hi.append(max(times) - v if times else 0.0)
            mark = " (skipped)" if r["status"] == "skipped" else (" (FAILED)" if not c else "")
            note = failed_note(r)
            labels.append(r["label"] + mark + (f" ({note})" if note else ""))
        top = max([v + h for v, h in zip(vals, hi)] + [1e-9])
        colours = ["#f28e2b" if r["server"].startswith("fastframe") else "#7ea6c9" for r in group]
        ax.barh(ys, vals, color=colours)
        ax.errorbar(vals, ys, xerr=[lo, hi], fmt="none", ecolor="#222222", elinewidth=1, capsize=3)
        for y, v, h, r in zip(ys, vals, hi, group):
            if v > 0:
                ax.text(v + h + top * 0.01, y, f"{v:.3f} s", va="center", fontsize=8)
            elif r["status"] != "skipped":
                ax.text(top * 0.01, y, "FAILED: " + r["reason"][:60], va="center", fontsize=7, color="#b2182b")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.3)
        ax.set_xlabel("seconds from client start to exit (lower is better)", fontsize=8)
        ax.set_title(f"download of one {fmt_bytes(size)} file", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    meta = data["meta"]
    fig.suptitle(f"fastframe file download, {meta['date']} - {meta.get('cpu_count', '?')} CPUs, "
                 f"{meta.get('pinning', '')}\nbar: median of {meta.get('repeat', '?')} downloads, whiskers: min-max",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# -- the codec bench ----------------------------------------------------------------------------------------


def codec_summary(data: dict[str, Any]) -> str:
    """Markdown: per section and size, the extension's rate over each other row's (how many times faster)."""
    rows = data["results"]
    sizes = sorted({r["size"] for r in rows})
    out = ["| section | row | " + " | ".join(fmt_bytes(s) for s in sizes) + " |"]
    out.append("|---|---" + "|---" * len(sizes) + "|")
    for section in data["sections"]:
        labels: list[str] = []
        for r in rows:
            if r["section"] == section and r["key"] != "ext" and r["label"] not in labels:
                labels.append(r["label"])
        for label in labels:
            cells = []
            for s in sizes:
                r = next((x for x in rows if x["section"] == section and x["label"] == label and x["size"] == s), None)
                cells.append("-" if r is None or r.get("ext_ratio") is None else f"{r['ext_ratio']:.2f}")
            out.append(f"| {section} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_codec(data: dict[str, Any], path: str) -> str | None:
    """One panel per section: the extension's rate / each row's rate, per size, as labelled points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    rows = data["results"]
    sections = [s for s in data["sections"] if any(r["section"] == s and r["key"] != "ext" for r in rows)]
    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(len(sections), 1, figsize=(10, 3.1 * len(sections) + 1.2), squeeze=False)
    markers = "osD^vP*X"
    for i, section in enumerate(sections):
        ax = axes[i][0]
        labels: list[str] = []
        for r in rows:
            if r["section"] == section and r["key"] != "ext" and r["label"] not in labels:
                labels.append(r["label"])
        ext = next((r["label"] for r in rows if r["section"] == section and r["key"] == "ext"), "the extension")
        for j, label in enumerate(labels):
            pts = [(sizes.index(r["size"]), r["ext_ratio"]) for r in rows
                   if r["section"] == section and r["label"] == label and r.get("ext_ratio")]  # fmt: skip
            if not pts:
                continue
            offset = (j - (len(labels) - 1) / 2) * 0.12
            xs = [x + offset for x, _ in pts]
            ys = [y for _, y in pts]
            ax.plot(xs, ys, marker=markers[j % len(markers)], linestyle=":", linewidth=0.8, label=label)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f}" if y < 10 else f"{y:.0f}", (x, y), textcoords="offset points", xytext=(5, 3),
                            fontsize=7)  # fmt: skip
        ax.axhline(1.0, color="#444444", linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if str(f"{y:g}")[0] in "25" else ""))
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([fmt_bytes(s) for s in sizes], fontsize=8)
        ax.set_xlim(-0.5, len(sizes) - 0.3)
        ax.set_ylabel("ratio (log scale)", fontsize=8)
        ax.set_title(f"{data['sections'][section]}\n{ext}'s rate / the row's rate (above 1: the extension is "
                     "faster; 1 = the line)", fontsize=8.5)  # fmt: skip
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best", frameon=False)
    meta = data["meta"]
    fig.suptitle(f"fastframe {meta.get('fastframe_version', '')} codec, Python {meta.get('python_version', '')} "
                 f"({meta.get('platform_short', '')}): how many times the extension's rate each row is",
                 fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# -- instructions per request (bench/instructions.py) -------------------------------------------------------


def instructions_summary(data: dict[str, Any]) -> str:
    """Markdown: user-space instructions per request, one row per server, one column per (size, depth)."""
    rows = data["rows"]
    cols = sorted({(r["size"], r["depth"]) for r in rows})
    names: list[tuple[str, str]] = []
    for r in rows:
        if (r["server"], r.get("label", r["server"])) not in names and "error" not in r:
            names.append((r["server"], r.get("label", r["server"])))
    by = {(r["server"], r["size"], r["depth"]): r for r in rows}
    out = [f"`{data['command']}` (Python {data['python']}), user-space instructions per request:", ""]
    out.append("| server | " + " | ".join(f"{fmt_bytes(s)}, depth {d}" for s, d in cols) + " |")
    out.append("|---" * (len(cols) + 1) + "|")
    for name, label in names:
        cells = []
        for size, depth in cols:
            r = by.get((name, size, depth))
            cells.append("-" if r is None else ("FAILED" if "error" in r else f"{r['per_request']:,.0f}"))
        out.append(f"| {label} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(out)


# -- the TLS rows (bench_tls.py) -----------------------------------------------------------------------------

TLS_LABELS = {
    "select-tls": "fastframe select `--tls-cert`",
    "uvloop-tls": "uvloop `Protocol`, `ssl=` (the same context)",
    "fastframe": "fastframe serve --tls-* + fastframe get --tls",
    "nginx": "nginx (`ssl_certificate`) + curl",
}


def tls_summary(data: dict[str, Any]) -> str:
    """Markdown: the TLS echo rows (req/s, CPU us/req per depth) and the download rows."""
    depths = sorted({r["depth"] for r in data["echo"]})
    servers = list(dict.fromkeys(r["server"] for r in data["echo"]))
    head = "| server | " + " | ".join(f"64 B, depth {d}: req/s, CPU µs/req" for d in depths) + " |"
    lines = [head, "|---" * (len(depths) + 1) + "|"]
    for name in servers:
        cells = []
        for d in depths:
            r = next((x for x in data["echo"] if x["server"] == name and x["depth"] == d), None)
            if r is not None and r.get("ok"):
                cells.append(f"{r['req_per_s']:,.0f}, {fmt_num(r['cpu_us_per_req'])}")
            else:
                cells.append("failed")
        label = TLS_LABELS.get(name, name)
        if name.startswith("select"):
            label, cells = f"**{label}**", [f"**{c}**" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if data["downloads"]:
        size = fmt_bytes(data["downloads"][0]["size"])
        lines += [
            "",
            f"| server + client, {size} over TLS | seconds | server CPU s | client CPU s |",
            "|---|---|---|---|",
        ]
        for row in data["downloads"]:
            c = row.get("chosen")
            cells = (
                [f"{c['seconds']:.2f}", f"{c['server_cpu_s']:.2f}", f"{c['client_cpu_s']:.2f}"] if c else ["failed"] * 3
            )
            lines.append(f"| {TLS_LABELS.get(row['server'], row['server'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tls(data: dict[str, Any], path: str) -> str | None:
    plt = _pyplot()
    if plt is None:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    depths = sorted({r["depth"] for r in data["echo"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    for ax, key, title in ((axes[0], "req_per_s", "req/s (higher is better)"),
                           (axes[1], "cpu_us_per_req", "server CPU µs per request (lower is better)")):  # fmt: skip
        labels, vals, colours = [], [], []
        for d in depths:
            for r in (x for x in data["echo"] if x["depth"] == d):
                labels.append(f"{TLS_LABELS.get(r['server'], r['server']).replace('`', '')}, depth {d}")
                vals.append(r.get(key, 0.0) if r.get("ok") else 0.0)
                colours.append("#f28e2b" if r["server"].startswith("select") else "#7ea6c9")
        ys = list(range(len(vals)))
        ax.barh(ys, vals, color=colours)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(title, fontsize=8)
    fig.suptitle("TLS framed echo, 64 B (" + data["meta"].get("cipher", "") + ")", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- generated markdown blocks ------------------------------------------------------------------------------

RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "servers-text": lambda d: "```text\n" + servers_text(d) + "\n```",
    "servers-summary": servers_summary,
    "servers-targets": lambda d: targets_text(d, markdown=True),
    "files-summary": files_summary,
    "codec-summary": codec_summary,
    "instructions-summary": instructions_summary,
    "tls-summary": tls_summary,
}
BLOCK = re.compile(r"^<!-- report (\S+) (\S+) -->\n(.*?)^<!-- /report -->$", re.M | re.S)


def render_blocks(md_path: str) -> tuple[str, str]:
    """(the file's text, the text with every generated block rendered afresh)."""
    with open(md_path) as f:
        text = f.read()
    base = os.path.dirname(os.path.abspath(md_path))

    def fill(m: re.Match[str]) -> str:
        kind, rel = m.group(1), m.group(2)
        if kind not in RENDERERS:
            raise ValueError(f"{md_path}: unknown report kind {kind!r} (one of {', '.join(RENDERERS)})")
        body = RENDERERS[kind](load(os.path.join(base, rel)))
        return f"<!-- report {kind} {rel} -->\n{body}\n<!-- /report -->"

    return text, BLOCK.sub(fill, text)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tables and charts of saved bench results (see the module docstring).")
    p.add_argument("json", nargs="?", help="a results file saved with --json")
    p.add_argument("--markdown", action="store_true", help="markdown tables instead of text")
    p.add_argument("--plot", metavar="FILE.png", help="draw the chart of that file")
    p.add_argument("--update", nargs="+", metavar="MD", help="rewrite the generated blocks of these markdown files")
    p.add_argument("--check", nargs="+", metavar="MD", help="exit 1 if a generated block differs from its JSON")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.update or args.check:
        stale = []
        for md in args.update or args.check:
            old, new = render_blocks(md)
            if old != new:
                if args.update:
                    with open(md, "w") as f:
                        f.write(new)
                    print(f"updated {md}")
                else:
                    stale.append(md)
        for md in stale:
            print(f"{md}: a generated table differs from its JSON (run bench/report.py --update {md})")
        return 1 if stale else 0
    if not args.json:
        p.error("give a results file, or --update/--check MD...")
    data = load(args.json)
    kind = kind_of(data)
    if args.plot:
        if kind == "instructions":
            p.error("no chart for instructions.py results: they are one table")
        plotters = {"servers": plot_servers, "files": plot_files, "codec": plot_codec, "tls": plot_tls}
        problem = plotters[kind](data, args.plot)
        print(f"note: {problem}" if problem else f"chart saved to {args.plot}")
        return 1 if problem else 0
    if kind == "servers":
        print(servers_summary(data) if args.markdown else servers_text(data))
        tt = targets_text(data, markdown=args.markdown)
        if tt:
            print("\n" + ("" if args.markdown else "issue 13 targets (ratios of the chosen runs):\n") + tt)
    elif kind == "files":
        print(files_summary(data))
    elif kind == "instructions":
        print(instructions_summary(data))
    elif kind == "tls":
        print(tls_summary(data))
    else:
        print(codec_summary(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

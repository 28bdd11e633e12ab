"""What a run says: rows with the derived numbers (GB/s of minimal traffic,
percent of the roof, fusedopt's speedup over each peer), printed as tables,
written as JSON and drawn as a plot."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

import fusedopt

from . import contention
from .implementations import FAMILIES
from .runner import Result, Settings

__all__ = ["derive", "format_section", "format_summary", "machine_info", "write_json", "plot", "plot_title",
           "contention_text",
           "PEER_FAMILIES"]

# The peers fusedopt is compared with, in the order of the summary's columns.
PEER_FAMILIES = ["numpy", "numpy tuned", "cython loop", "torch for", "torch foreach", "torch fused", "deepspeed",
                 "bitsandbytes", "torchao"]


def derive(results: Iterable[Result], settings: Settings) -> list[dict[str, Any]]:
    """One flat dict per result, with the numbers that compare it to its
    roof (the roof at the same thread count) and to fusedopt's headline."""
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.rule.key, r.precision.name, r.workload.name)].append(r)
    target, threads = settings.headline
    rows = []
    for group in groups.values():
        roofs = {r.implementation.threads: r.timing for r in group
                 if r.implementation.family == "roof" and r.timing}
        headline = next((r.timing for r in group if r.implementation.family == "fusedopt" and r.timing
                         and r.implementation.target == target and r.implementation.threads == threads), None)
        for r in group:
            impl, timing, traffic = r.implementation, r.timing, r.bytes_per_step
            row = {
                "rule": r.rule.key, "optimizer": r.rule.describe(), "precision": r.precision.name,
                "dtype": r.precision.dtype, "storage_options": dict(r.precision.options),
                "workload": r.workload.name, "tensors": r.workload.tensors, "elements": r.workload.elements,
                "bytes_per_element": r.precision.bytes_per_element(r.rule), "bytes_per_step": traffic,
                "implementation": impl.label, "family": impl.family, "target": impl.target,
                "threads": impl.threads, "skipped": r.skipped,
                "headline": impl.family == "fusedopt" and impl.target == target and impl.threads == threads,
                "seconds": timing.as_dict() if timing else None,
                "gb_per_s": None, "roof_threads": None, "percent_of_roof": None, "fusedopt_speedup": None,
            }
            if timing:
                if traffic:
                    row["gb_per_s"] = traffic / timing.median / 1e9
                    roof_threads = _closest(roofs, impl.threads)
                    if roof_threads is not None and impl.family != "roof":
                        row["roof_threads"] = roof_threads
                        row["percent_of_roof"] = 100 * roofs[roof_threads].median / timing.median
                if headline and impl.family != "roof":
                    row["fusedopt_speedup"] = timing.median / headline.median
            rows.append(row)
    return rows


def _closest(roofs: dict[int, Any], threads: int) -> int | None:
    """The roof measured at ``threads``, else at the most threads below, else the fewest."""
    if not roofs:
        return None
    below = [n for n in roofs if n <= threads]
    return max(below) if below else min(roofs)


# ------------------------------------------------------------------ tables

def format_time(seconds: float) -> str:
    """Three significant digits in s, ms, µs or ns."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        value = float(f"{seconds / scale:.3g}")
        if value >= 1 or unit == "ns":
            decimals = 2 - int(np.floor(np.log10(value))) if value > 0 else 0
            return f"{value:.{max(0, decimals)}f} {unit}"
    raise AssertionError("unreachable")


def _format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.0f}×" if ratio >= 99.5 else f"{ratio:.3g}×"


def _table(header: list[str], lines: list[list[str]], right: set[int], markdown: bool = False) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]

    def render(cells):
        padded = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = ["-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)]
    else:
        rule = ["-" * w for w in widths]
    return [render(header), render(rule)] + [render(line) for line in lines]


def section_title(row: dict[str, Any], rule) -> str:
    return (f"{row['rule']}: {row['optimizer']}, {row['precision']}, {row['bytes_per_element']} bytes/element "
            f"of minimal traffic ({rule.streams_text()})")


def format_section(rows: list[dict[str, Any]], rule) -> str:
    """Every implementation on every workload of one (rule, precision)."""
    header = ["workload", "implementation", "time/step", "IQR/median", "GB/s", "% roof", "fusedopt speedup"]
    lines, skipped, previous = [], {}, None
    for row in rows:
        if row["skipped"]:
            skipped.setdefault(row["implementation"], row["skipped"])
            continue
        seconds = row["seconds"]
        spread = (seconds["q3"] - seconds["q1"]) / seconds["median"] * 100
        lines.append([
            row["workload"] if row["workload"] != previous else "",
            row["implementation"],
            format_time(seconds["median"]),
            f"{spread:.0f}%",
            f"{row['gb_per_s']:.3g}" if row["gb_per_s"] is not None else "-",
            f"{row['percent_of_roof']:.0f}%" if row["percent_of_roof"] is not None else "-",
            "=" if row["headline"] else _format_ratio(row["fusedopt_speedup"]),
        ])
        previous = row["workload"]
    out = [section_title(rows[0], rule), ""] + _table(header, lines, right={2, 3, 4, 5, 6})
    for label, reason in skipped.items():
        out.append(f"  not run: {label}: {reason}")
    return "\n".join(out)


def format_summary(rows: list[dict[str, Any]], settings: Settings, markdown: bool = False) -> str:
    """One line per (rule, precision, workload): fusedopt's headline and its
    speedup over each peer (peer time / fusedopt time); a Markdown table
    with ``markdown``."""
    target, threads = settings.headline
    families = [f for f in PEER_FAMILIES if f in settings.families]
    header = ["rule", "precision", "workload", f"fusedopt {target} {threads}t", "GB/s", "% roof",
              *(f"vs {f}" for f in families)]
    by_group: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_group[(row["rule"], row["precision"], row["workload"])][row["family"] if row["family"] != "fusedopt"
                                                               or row["headline"] else "-"] = row
    lines = []
    for (rule, precision, workload), group in by_group.items():
        head = group.get("fusedopt")
        if not head or not head["seconds"]:
            continue
        lines.append([
            rule, precision, workload, format_time(head["seconds"]["median"]),
            f"{head['gb_per_s']:.3g}" if head["gb_per_s"] is not None else "-",
            f"{head['percent_of_roof']:.0f}%" if head["percent_of_roof"] is not None else "-",
            *(_format_ratio(group[f]["fusedopt_speedup"]) if f in group else "-" for f in families),
        ])
    title = (f"fusedopt ({target}, {threads} thread{'s' if threads > 1 else ''}) against each peer: "
             "peer time / fusedopt time, above 1 means fusedopt is faster")
    return "\n".join([title, ""] + _table(header, lines, right=set(range(3, len(header))), markdown=markdown))


# -------------------------------------------------------------------- JSON

# Variables that change what is measured, recorded when set.
ENVIRONMENT = ["FUSEDOPT_ISA", "FUSEDOPT_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "OMP_PROC_BIND", "OMP_PLACES", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]

def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "fusedopt": fusedopt.cpu_features(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    info["environment"] = {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}
    for name in ("torch", "Cython", "deepspeed", "bitsandbytes", "torchao"):  # from the metadata: importing deepspeed takes seconds
        try:
            info[name.lower()] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name.lower()] = None
    return info


def contention_text(settings: Settings) -> str:
    """What ran beside the measurement, for the header, the plot and the JSON."""
    if not settings.contention:
        return "no busy processes started"
    return f"{settings.contention} busy processes beside it ({contention.KINDS[settings.contention_kind]})"


def write_json(path: str, rows: list[dict[str, Any]], settings: Settings, machine: dict[str, Any],
               command: str, duration: float) -> None:
    document = {
        "schema": "fusedopt-bench/1",
        "command": command,
        "duration_seconds": duration,
        "machine": machine,
        "settings": {
            "rules": {r.key: r.describe() for r in settings.rules},
            "precisions": {p.name: {"dtype": p.dtype, "storage_options": dict(p.options), "summary": p.summary}
                           for p in settings.precisions},
            "workloads": {w.name: {"tensors": w.tensors, "elements": w.elements} for w in settings.workloads},
            "threads": settings.threads, "targets": settings.targets,
            "headline": {"target": settings.headline[0], "threads": settings.headline[1]},
            "seconds_per_measurement": settings.seconds, "min_samples": settings.min_samples,
            "rounds": settings.rounds, "seed": settings.seed,
            "contention": {"processes": settings.contention, "kind": settings.contention_kind,
                           "description": contention_text(settings)},
        },
        "implementations": {family: FAMILIES[family].description for family in settings.families},
        "results": rows,
    }
    with open(path, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")


# -------------------------------------------------------------------- plot

def plot_title(machine: dict[str, Any], settings: Settings, when: datetime.datetime | None = None) -> str:
    """Which machine, when, on how many threads, beside what: the plot says it all itself."""
    features = machine["fusedopt"]
    when = when or datetime.datetime.now().astimezone()
    cpus = machine.get("cpus_usable") or machine["cpu_count"]
    target, threads = settings.headline
    return (f"fusedopt {features['version']} on {features['cpu']} ({cpus} CPUs), {when:%Y-%m-%d %H:%M %Z}\n"
            f"fusedopt {target}, threads {', '.join(map(str, settings.threads))} (headline {threads}); "
            f"{contention_text(settings)}")


def plot(path: str, rows: list[dict[str, Any]], title: str) -> None:
    """GB/s of minimal traffic against size, one panel per (rule, precision),
    a line per implementation, the roofs dashed; ``title`` on top (and in
    the PNG's Title field), the legend right under the panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["seconds"] and row["tensors"] == 1 and row["elements"] > 0:
            panels[(row["rule"], row["precision"])].append(row)
    if not panels:
        raise ValueError("nothing to plot: no single-tensor workload with elements was measured")
    # Panels row by row: a row per rule with a column per precision, or with
    # one precision, three rules to a row.
    precisions = list(dict.fromkeys(precision for _, precision in panels))
    columns = len(precisions) if len(precisions) > 1 else min(3, len(panels))
    grid_rows = -(-len(panels) // columns)
    labels = list(dict.fromkeys(row["implementation"] for group in panels.values() for row in group))
    legend_columns = min(len(labels), 2 * columns + 1)
    title_height, legend_height = 0.5, 0.25 * -(-len(labels) // legend_columns) + 0.2  # inches
    width, panels_height = 5.0 * columns, 3.3 * grid_rows
    height = title_height + panels_height + legend_height
    figure, axes = plt.subplots(grid_rows, columns, figsize=(width, height), squeeze=False)
    roof_rows = [row for group in panels.values() for row in group if row["family"] == "roof"]
    widest_roof = max(roof_rows, key=lambda row: row["threads"])["implementation"] if roof_rows else None
    colours = {label: f"C{i % 10}" for i, label in enumerate(l for l in labels if not l.startswith("roof"))}
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for index, ((rule, precision), group) in enumerate(panels.items()):
        axis = axes.flat[index]
        for label in labels:
            points = sorted((r["elements"], r["gb_per_s"]) for r in group if r["implementation"] == label)
            if not points:
                continue
            x, y = zip(*points)
            if label.startswith("roof"):
                axis.plot(x, y, "k--" if label == widest_roof else "k:", linewidth=1.5, label=label)
            else:
                axis.plot(x, y, "o-", color=colours[label], markersize=3, linewidth=1.2, label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{rule} {precision} ({group[0]['bytes_per_element']} B/element)", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        if index % columns == 0:
            axis.set_ylabel("GB/s of minimal traffic")
        axis.set_xlabel("elements")
    handles, names = axes[0][0].get_legend_handles_labels()
    for axis in axes.flat:  # panels may differ in which implementations ran
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    figure.suptitle(title, fontsize=10)
    figure.legend(handles, names, loc="lower center", ncol=legend_columns, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1 - title_height / height))
    figure.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(figure)

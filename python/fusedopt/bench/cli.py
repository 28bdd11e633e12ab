"""``python -m fusedopt bench``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from typing import Callable, TypeVar


import fusedopt

from . import contention, report, runner, workloads
from .implementations import FAMILIES, FAMILY_KEYS
from .precisions import precisions_named
from .rules import QUICK_RULES, RULES, rule_named

__all__ = ["add_arguments", "main"]

T = TypeVar("T")

QUICK = dict(rules=[rule_named(key) for key in QUICK_RULES], sizes=workloads.QUICK_SIZES, models=["model200"],
             dtypes=["float32"], seconds=0.04, min_samples=3)
# Peers that run only when asked for: DeepSpeed builds its kernel on first
# use (minutes), torchao compiles its step (torch.compile), both of which
# would break --quick's minute.
OPT_IN_FAMILIES = ("deepspeed", "bitsandbytes", "torchao")
FULL = dict(rules=RULES, sizes=workloads.DEFAULT_SIZES, models=list(workloads.MODELS), dtypes=["float32", "float64"],
            seconds=0.2, min_samples=5)


def _listed(parse: Callable[[str], T], everything: list[T] | None = None) -> Callable[[str], list[T]]:
    """An argparse type for a comma-separated list ('all' and 'none' allowed)."""
    def convert(text: str) -> list[T]:
        if text == "all" and everything is not None:
            return list(everything)
        if text == "none":
            return []
        try:
            return [parse(item.strip()) for item in text.split(",") if item.strip()]
        except (ValueError, KeyError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert




def _unique(lists):
    """The precisions of several --dtypes items, each once, in order."""
    return list(dict.fromkeys(p for items in lists for p in items))


def _model(name: str) -> str:
    if name not in workloads.MODELS:
        raise ValueError(f"unknown model {name!r}; the models are {', '.join(workloads.MODELS)}")
    return name


def _family(name: str) -> str:
    if name not in FAMILY_KEYS:
        raise ValueError(f"unknown implementation {name!r}; they are {', '.join(FAMILY_KEYS)}")
    return FAMILY_KEYS[name]


def _threads(text: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(f"a thread count must be >= 1, got {count}")
    return count


def _count(text: str) -> int:
    count = int(text)
    if count < 0:
        raise ValueError(f"a count of processes must be >= 0, got {count}")
    return count


def _rounds(text: str) -> int:
    rounds = int(text)
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    return rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "How much faster is fusedopt than NumPy, PyTorch and a plain compiled loop on this machine, and "
        "how close is it to the memory roof? Times one optimizer step of each implementation on each "
        "rule, precision and workload; prints a table per rule and precision and a summary.")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (under a minute): rules " + ",".join(QUICK_RULES) +
                             ", float32, sizes " + ",".join(map(workloads.size_label, workloads.QUICK_SIZES)) +
                             " and model200, shorter measurements")
    parser.add_argument("--rules", type=_listed(rule_named, RULES), metavar="LIST",
                        help=f"rules to measure, or all (default all: {','.join(r.key for r in RULES)}; "
                             f"with --quick {','.join(QUICK_RULES)})")
    parser.add_argument("--sizes", type=_listed(workloads.parse_size), metavar="LIST",
                        help="single-tensor sizes in elements, e.g. 0,1e3,1e5 (0 times the call overhead "
                             "alone; default 0 and 1e3..1e8, sizes that do not fit in memory are skipped)")
    parser.add_argument("--models", type=_listed(_model, list(workloads.MODELS)), metavar="LIST",
                        help=f"multi-tensor workloads: {','.join(workloads.MODELS)}, all or none (default all)")
    parser.add_argument("--dtypes", type=_listed(precisions_named), metavar="LIST",
                        help="float32,float64,bfloat16,float16: every precision mode of each (16-bit params with "
                             "16-bit or float32 state, master weights, Kahan summation, stochastic rounding), or "
                             "one mode by name, e.g. bfloat16+fp32-state (default float32,float64)")
    parser.add_argument("--threads", type=_listed(_threads), metavar="LIST",
                        help="thread counts for fusedopt and the roof; torch runs at the largest "
                             "(default 1 and fusedopt's default count)")
    parser.add_argument("--targets", metavar="LIST",
                        help="fusedopt's SIMD targets to run, e.g. avx512,avx2,sse2, or all (default: the one "
                             "chosen at import); the first is the one compared with the peers")
    parser.add_argument("--impls", type=_listed(_family, list(FAMILY_KEYS)), metavar="LIST",
                        help=f"implementations: {','.join(FAMILY_KEYS)}, or all (default all but "
                             f"{','.join(k for k, f in FAMILY_KEYS.items() if f in OPT_IN_FAMILIES)})")
    parser.add_argument("--seconds", type=float, metavar="S",
                        help="time per measurement (default 0.2, 0.04 with --quick)")
    parser.add_argument("--min-samples", type=int, metavar="N", help="samples per measurement, at least")
    parser.add_argument("--rounds", type=_rounds, default=1, metavar="N",
                        help="measure the implementations of each row in turns, N rounds of --seconds / N each, "
                             "so that a phase of a shared machine slows them alike (default 1: one after another)")
    parser.add_argument("--contention", type=_count, default=0, metavar="N",
                        help="run N busy processes beside the measurement, as on a busy machine (default 0)")
    parser.add_argument("--contention-kind", choices=list(contention.KINDS), default="python",
                        help="what the busy processes run: " +
                             "; ".join(f"{kind}: {text}" for kind, text in contention.KINDS.items()) +
                             " (default python)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrays' values (default 0)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw GB/s against size as a PNG (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH", help="write the summary as a Markdown table (for a README)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from(args: argparse.Namespace) -> runner.Settings:
    defaults = QUICK if args.quick else FULL
    sizes = defaults["sizes"] if args.sizes is None else args.sizes
    models = defaults["models"] if args.models is None else args.models
    chosen_rules = defaults["rules"] if args.rules is None else args.rules
    chosen_workloads = [workloads.single_tensor(n) for n in sizes] + [workloads.MODELS[m]() for m in models]
    if not chosen_workloads:
        raise SystemExit("bench: no workload left (--sizes none and --models none)")
    if not chosen_rules:
        raise SystemExit("bench: no rule chosen")

    features = fusedopt.cpu_features()
    supported = features["supported_targets"]
    if args.targets is None:
        targets = [features["isa"]]
    elif args.targets == "all":
        targets = list(supported)
    else:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        for target in targets:
            if target not in supported:
                raise SystemExit(f"bench: target {target!r} is not supported here; supported: {', '.join(supported)}")
    threads = sorted(set(args.threads or [1, fusedopt.get_num_threads()]))
    if not threads:
        raise SystemExit("bench: no thread count chosen")
    default_families = [f for f in FAMILIES if f not in OPT_IN_FAMILIES]
    families = [f for f in FAMILIES if f in (args.impls if args.impls is not None else default_families)]
    if "fusedopt" not in families:
        families.insert(1 if "roof" in families else 0, "fusedopt")  # every comparison is with fusedopt
    return runner.Settings(
        rules=list(chosen_rules),
        precisions=_unique(args.dtypes or [precisions_named(d) for d in defaults["dtypes"]]),
        workloads=chosen_workloads,
        threads=threads,
        targets=targets,
        families=families,
        seconds=args.seconds or defaults["seconds"],
        min_samples=args.min_samples or defaults["min_samples"],
        seed=args.seed,
        contention=args.contention,
        contention_kind=args.contention_kind,
        rounds=args.rounds,
    )


class ProgressBar:
    """One line on stderr, redrawn in place (only on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.drawn = False
        self.start = time.perf_counter()

    def __call__(self, progress: runner.Progress) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        filled = int(24 * progress.done / max(progress.total, 1))
        elapsed = time.perf_counter() - self.start
        line = (f"[{'#' * filled}{'.' * (24 - filled)}] {progress.done}/{progress.total} "
                f"{elapsed:4.0f} s  {progress.label}")
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stderr.write("\r" + " " * width + "\r")
            sys.stderr.flush()
            self.drawn = False


def main(args: argparse.Namespace, command: str | None = None) -> int:
    settings = settings_from(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("bench: --plot needs matplotlib (pip install 'fusedopt[bench]')") from None
    # Checked before measuring: a missing folder used to fail only after the whole run.
    for option, path in (("--json", args.json), ("--plot", args.plot), ("--markdown", args.markdown)):
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if folder and not os.path.isdir(folder):
            raise SystemExit(f"bench: {option} {path}: the folder {folder} does not exist")
    command = command or "python -m fusedopt bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = report.machine_info()
    features = machine["fusedopt"]
    print(f"fusedopt {features['version']} on {features['cpu']}: targets {', '.join(settings.targets)}, "
          f"threads {', '.join(map(str, settings.threads))}; numpy {machine['numpy']}, "
          f"torch {machine['torch'] or 'not installed'}, deepspeed {machine['deepspeed'] or 'not installed'}, "
          f"bitsandbytes {machine['bitsandbytes'] or 'not installed'}, torchao {machine['torchao'] or 'not installed'}")
    if "load_average" in machine:
        load, cpus = machine["load_average"][0], machine.get("cpus_usable") or machine["cpu_count"] or 1
        print(f"load average {load:.2f} on {cpus} CPUs")
        if load > 0.5 * cpus:
            print("warning: this machine is busy: expect slow, noisy numbers; fusedopt at its default "
                  "thread count steps back to one thread while a second one waits for a core, a fixed "
                  "count (--threads) may wait milliseconds")
    print(f"contention: {report.contention_text(settings)}")
    if settings.rounds > 1:
        print(f"each row's implementations measured in turns: {settings.rounds} rounds of "
              f"{settings.seconds / settings.rounds:g} s each, their arrays all allocated at once")
    if "deepspeed" in settings.families:
        print("deepspeed: DeepSpeed builds its CPU Adam on first use with -march=native (its own build, "
              "for this CPU only; minutes the first time)")
    print(f"command: {command}\n", flush=True)

    bar = ProgressBar(not args.no_progress)
    progress = runner.Progress(listeners=[bar])
    rules = {r.key: r for r in settings.rules}

    def print_section(section: list[runner.Result]) -> None:
        bar.clear()
        rows = report.derive(section, settings)
        print(report.format_section(rows, rules[rows[0]["rule"]]) + "\n", flush=True)

    start = time.perf_counter()
    results = runner.run(settings, progress, on_section_done=print_section)
    duration = time.perf_counter() - start
    bar.clear()

    rows = report.derive(results, settings)
    print(report.format_summary(rows, settings))
    print(f"\n{len(results)} measurements in {duration:.0f} s")
    if args.json:
        report.write_json(args.json, rows, settings, machine, command, duration)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, rows, report.plot_title(machine, settings))
        print(f"wrote {args.plot}")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"`{command}` on {features['cpu']} ({machine.get('cpus_usable', machine['cpu_count'])} CPUs), "
                      f"fusedopt {features['version']}, numpy {machine['numpy']}, torch {machine['torch']}\n\n")
            out.write(report.format_summary(rows, settings, markdown=True) + "\n")
        print(f"wrote {args.markdown}")
    return 0

"""The benchmark run: every implementation on every (rule, precision, workload).

For each workload the arrays are made once (every page written); each
implementation gets its own copy of the params (it updates them) and shares
the grads (nobody writes them), builds its optimizer, warms up and is timed.
Its arrays are freed before the next one starts, so the largest sizes need
memory for one implementation at a time.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fusedopt

from . import implementations as impls
from .implementations import Implementation
from .contention import busy_processes
from .precisions import Precision
from .rules import BenchRule
from .timing import Timing, measure
from .workloads import Workload, available_memory_bytes, grad_sets, make_arrays

__all__ = ["Settings", "Result", "run"]

# Arrays that may be alive at once, per element, beyond the rule's own
# streams: the master params and grads, a params copy, and temporaries of
# the NumPy reference or torch's foreach lists (or the negated grads of
# centered RMSprop, see workloads.grad_sets).
EXTRA_ARRAYS = 5


@dataclass
class Settings:
    rules: list[BenchRule]
    precisions: list[Precision]
    workloads: list[Workload]
    threads: list[int]        # fusedopt and the roof run at each; torch and deepspeed at the largest
    targets: list[str]        # fusedopt's SIMD targets; the first is the headline
    families: list[str]       # keys of implementations.FAMILIES
    seconds: float = 0.2      # per measurement
    min_samples: int = 5
    seed: int = 0
    contention: int = 0       # busy processes beside the measurement (see contention.py)
    contention_kind: str = "python"

    @property
    def headline(self) -> tuple[str, int]:
        """The fusedopt configuration the peers are compared with: the best
        target at all threads, as a user gets it by default."""
        return self.targets[0], max(self.threads)

    def implementations(self) -> list[Implementation]:
        best = fusedopt.cpu_features()["isa"]
        chosen: list[Implementation] = []
        for family in self.families:
            if family == "roof":
                chosen += [impls.make("roof", n, best) for n in self.threads]
            elif family == "fusedopt":
                chosen += [impls.make("fusedopt", n, target) for target in self.targets for n in self.threads]
            elif family.startswith("torch") or family in ("deepspeed", "bitsandbytes"):
                chosen.append(impls.make(family, max(self.threads)))
            else:  # NumPy and the plain loop run on one thread by nature
                chosen.append(impls.make(family, 1))
        return chosen


@dataclass
class Result:
    rule: BenchRule
    precision: Precision
    workload: Workload
    implementation: Implementation
    timing: Timing | None = None
    skipped: str | None = None   # why there is no timing

    @property
    def bytes_per_step(self) -> int:
        return self.workload.elements * self.precision.bytes_per_element(self.rule)


@dataclass
class Progress:
    """What the runner reports as it goes; the CLI draws it."""
    done: int = 0
    total: int = 0
    label: str = ""
    listeners: list[Callable[["Progress"], None]] = field(default_factory=list)

    def update(self, label: str, advance: int = 0) -> None:
        self.done += advance
        self.label = label
        for listener in self.listeners:
            listener(self)


def run(settings: Settings, progress: Progress | None = None,
        on_section_done: Callable[[list[Result]], None] | None = None) -> list[Result]:
    """Measure everything; ``on_section_done`` gets the results of each
    (rule, precision) as soon as that precision is done."""
    progress = progress or Progress()
    chosen = settings.implementations()
    progress.total = len(settings.rules) * len(settings.precisions) * len(settings.workloads) * len(chosen)
    if "cython loop" in settings.families:
        progress.update("building the plain Cython loop (once per machine)")
        impls.make("cython loop").unavailable(settings.rules[0])  # builds it, or learns why it cannot

    reasons = {(rule.key, impl): impl.unavailable(rule) for rule in settings.rules for impl in chosen}
    with busy_processes(settings.contention, settings.contention_kind):
        return _run_all(settings, chosen, reasons, progress, on_section_done)


def _run_all(settings: Settings, chosen: list[Implementation], reasons: dict, progress: Progress,
             on_section_done: Callable[[list[Result]], None] | None) -> list[Result]:
    results: list[Result] = []
    for precision in settings.precisions:
        measured: list[Result] = []
        for workload in settings.workloads:
            # One set of arrays per workload, shared by every rule (each gets its own copy of the params).
            largest = max(settings.rules, key=lambda rule: rule.streams)
            short_of_memory = _memory_shortfall(largest, precision, workload)
            params = grads = None
            if short_of_memory is None:
                params, grads = make_arrays(workload, precision.numpy_dtype, settings.seed)
            for rule in settings.rules:
                for impl in chosen:
                    progress.update(f"{precision.name} {workload.name} {rule.key}: {impl.label}")
                    result = Result(rule, precision, workload, impl)
                    result.skipped = short_of_memory or reasons[(rule.key, impl)] or impl.refuses(precision)
                    if result.skipped is None:
                        result.timing, result.skipped = _measure_one(impl, rule, precision, params, grads,
                                                                     settings)
                    measured.append(result)
                    progress.update(progress.label, advance=1)
            del params, grads
            gc.collect()
        for rule in settings.rules:
            section = [r for r in measured if r.rule is rule]
            results += section
            if on_section_done:
                on_section_done(section)
    return results


def _measure_one(impl: Implementation, rule: BenchRule, precision: Precision, params, grads,
                 settings: Settings) -> tuple[Timing | None, str | None]:
    own_params = [p.copy() for p in params]
    try:
        with impl.prepared(rule, precision, own_params, grad_sets(rule, grads)) as step:
            return measure(step, seconds=settings.seconds, min_samples=settings.min_samples), None
    except impls.Unsupported as refusal:
        return None, str(refusal)
    except Exception as error:  # noqa: BLE001 - only a peer's refusal is reported, not ours
        if not isinstance(impl, impls.PEERS):
            raise
        return None, f"{impl.family} raised {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _memory_shortfall(rule: BenchRule, precision: Precision, workload: Workload) -> str | None:
    # Counted as if every array were the widest the mode has, float32 at least
    # (16-bit arrays are made from float32 ones; a master copy is one more array).
    itemsize = max(precision.numpy_dtype.itemsize, precision.state_dtype.itemsize, 4)
    need = workload.elements * itemsize * (rule.streams + EXTRA_ARRAYS + (0 if precision.is_plain else 1))
    available = available_memory_bytes()
    if available is not None and need > 0.8 * available:
        return f"needs about {need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"
    return None

"""The benchmark run: every implementation on every (rule, precision, workload).

For each workload the arrays are made once (every page written); each
implementation gets its own copy of the params (it updates them) and shares
the grads (nobody writes them), builds its optimizer, warms up and is timed.
Its arrays are freed before the next one starts, so the largest sizes need
memory for one implementation at a time.
"""

from __future__ import annotations

import contextlib
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
from .timing import Timing, measure, measure_in_turns
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
    rounds: int = 1           # >1: the implementations of a row measured in turns, this many rounds

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
            short_of_memory = _memory_shortfall(largest, precision, workload,
                                                copies=len(chosen) if settings.rounds > 1 else 1)
            params = grads = None
            if short_of_memory is None:
                params, grads = make_arrays(workload, precision.numpy_dtype, settings.seed)
            for rule in settings.rules:
                row = [Result(rule, precision, workload, impl) for impl in chosen]
                for result in row:
                    result.skipped = short_of_memory or reasons[(rule.key, result.implementation)] or \
                        result.implementation.refuses(precision)
                if settings.rounds > 1:
                    progress.update(f"{precision.name} {workload.name} {rule.key}: all in turns")
                    _measure_in_turns([r for r in row if r.skipped is None], params, grads, settings)
                    progress.update(progress.label, advance=len(row))
                else:
                    for result in row:
                        progress.update(f"{precision.name} {workload.name} {rule.key}: {result.implementation.label}")
                        if result.skipped is None:
                            result.timing, result.skipped = _measure_one(result.implementation, rule, precision,
                                                                         params, grads, settings)
                        progress.update(progress.label, advance=1)
                measured += row
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
        return None, _peer_error(impl, error)


def _measure_in_turns(row: list[Result], params, grads, settings: Settings) -> None:
    """Every implementation of a row prepared at once (each on its own copy of
    the params) and timed in turns (timing.measure_in_turns). A peer that
    cannot prepare or take a first step is reported, as in _measure_one."""
    with contextlib.ExitStack() as stack:
        ready: list[tuple[Result, Callable[[], object]]] = []
        for result in row:
            impl, rule, precision = result.implementation, result.rule, result.precision
            try:
                step = stack.enter_context(impl.prepared(rule, precision, [p.copy() for p in params],
                                                         grad_sets(rule, grads)))
                step()  # a peer's refusal shows here, not in the middle of the rounds
                ready.append((result, step))
            except impls.Unsupported as refusal:
                result.skipped = str(refusal)
            except Exception as error:  # noqa: BLE001 - only a peer's refusal is reported, not ours
                if not isinstance(impl, impls.PEERS):
                    raise
                result.skipped = _peer_error(impl, error)
        timings = measure_in_turns([step for _, step in ready], rounds=settings.rounds, seconds=settings.seconds,
                                   min_samples=settings.min_samples)
        for (result, _), timing in zip(ready, timings):
            result.timing = timing


def _peer_error(impl: Implementation, error: Exception) -> str:
    return f"{impl.family} raised {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _memory_shortfall(rule: BenchRule, precision: Precision, workload: Workload, copies: int = 1) -> str | None:
    # Counted as if every array were the widest the mode has, float32 at least
    # (16-bit arrays are made from float32 ones; a master copy is one more
    # array), once per implementation prepared at the same time.
    itemsize = max(precision.numpy_dtype.itemsize, precision.state_dtype.itemsize, 4)
    need = copies * workload.elements * itemsize * (rule.streams + EXTRA_ARRAYS + (0 if precision.is_plain else 1))
    available = available_memory_bytes()
    if available is not None and need > 0.8 * available:
        return f"needs about {need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"
    return None

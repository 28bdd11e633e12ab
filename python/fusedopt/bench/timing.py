"""Timing one step: warm up, then repeat until the measurement has taken
about ``seconds``, and report the median and the spread per step."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

__all__ = ["Timing", "measure", "measure_in_turns"]

# A sample is one step, or a batch of fast steps lasting at least this long,
# so that reading the clock (tens of ns) costs under 0.5%. Samples stay
# short so that the median skips those the scheduler interrupted: on a busy
# machine a multi-threaded step now and then waits milliseconds for a core.
MIN_SAMPLE_SECONDS = 20e-6


@dataclass(frozen=True)
class Timing:
    """Seconds per step: order statistics over ``samples`` samples of
    ``steps_per_sample`` steps each, and the mean over all of them."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float
    samples: int
    steps_per_sample: int

    @property
    def relative_iqr(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def measure(step: Callable[[], object], *, seconds: float = 0.2, min_samples: int = 5,
            max_samples: int = 100_000, warmup_steps: int = 1) -> Timing:
    """Time ``step()``.

    The first warm-up step touches every page of the state and lets lazy
    implementations (torch) create theirs; every later step is a steady
    one. Then samples are taken until ``seconds`` have passed
    and there are at least ``min_samples``. The garbage collector is off
    while timing, as in ``timeit``.
    """
    with _collector_off():
        batch, samples = calibrate(step, warmup_steps)
        samples += take_samples(step, batch, seconds, min_samples - len(samples), max_samples - len(samples))
    return timing_of(samples, batch)


def measure_in_turns(steps: list[Callable[[], object]], *, rounds: int, seconds: float = 0.2,
                     min_samples: int = 5, warmup_steps: int = 1) -> list[Timing]:
    """Time several steps in turns: ``rounds`` rounds, in each of which every
    step is sampled for ``seconds / rounds``, the samples of each pooled. A
    phase of a shared machine (another tenant's burst, a change of memory
    bandwidth) then slows every step alike instead of the one measured at
    the time, so their ratios hold."""
    with _collector_off():
        calibrated = [calibrate(step, warmup_steps) for step in steps]
        pooled = [samples for _, samples in calibrated]
        per_round = -(-min_samples // rounds)
        for _ in range(rounds):
            for step, (batch, _), samples in zip(steps, calibrated, pooled):
                samples += take_samples(step, batch, seconds / rounds, per_round, 100_000)
    return [timing_of(samples, batch) for samples, (batch, _) in zip(pooled, calibrated)]


@contextlib.contextmanager
def _collector_off():
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def calibrate(step: Callable[[], object], warmup_steps: int = 1) -> tuple[int, list[int]]:
    """Warm up, then find the smallest batch of steps lasting
    MIN_SAMPLE_SECONDS (more warm-up, too): the batch, and the calibration
    as a first sample when one step is slow enough to be a sample."""
    clock = time.perf_counter_ns
    for _ in range(warmup_steps):
        step()
    batch = 1
    while True:
        start = clock()
        for _ in range(batch):
            step()
        elapsed = clock() - start
        if elapsed >= MIN_SAMPLE_SECONDS * 1e9:
            break
        batch *= 2
    return batch, [elapsed] if batch == 1 else []


def take_samples(step: Callable[[], object], batch: int, seconds: float, min_samples: int,
                 max_samples: int) -> list[int]:
    """Nanoseconds per batch of steps, until ``seconds`` have passed and
    there are at least ``min_samples`` (at most ``max_samples``)."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    budget_end = clock() + seconds * 1e9
    while len(samples) < max_samples and (len(samples) < min_samples or clock() < budget_end):
        start = clock()
        for _ in range(batch):
            step()
        samples.append(clock() - start)
    return samples


def timing_of(samples: list[int], batch: int) -> Timing:
    per_step = np.asarray(samples, dtype=np.float64) * (1e-9 / batch)
    low, q1, median, q3, high = np.percentile(per_step, [0, 25, 50, 75, 100])
    return Timing(float(median), float(q1), float(q3), float(low), float(high), float(per_step.mean()),
                  len(samples), batch)

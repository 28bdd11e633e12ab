"""Timing one step: warm up, then repeat until the measurement has taken
about ``seconds``, and report the median and the spread per step."""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

__all__ = ["Timing", "measure"]

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
    clock = time.perf_counter_ns
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup_steps):
            step()
        batch = 1
        while True:  # the smallest batch lasting MIN_SAMPLE_SECONDS (more warm-up, too)
            start = clock()
            for _ in range(batch):
                step()
            elapsed = clock() - start
            if elapsed >= MIN_SAMPLE_SECONDS * 1e9:
                break
            batch *= 2
        samples: list[int] = [elapsed] if batch == 1 else []  # a slow step's calibration is a sample
        budget_end = clock() + seconds * 1e9
        while len(samples) < max_samples and (len(samples) < min_samples or clock() < budget_end):
            start = clock()
            for _ in range(batch):
                step()
            samples.append(clock() - start)
    finally:
        if collecting:
            gc.enable()
    per_step = np.asarray(samples, dtype=np.float64) * (1e-9 / batch)
    low, q1, median, q3, high = np.percentile(per_step, [0, 25, 50, 75, 100])
    return Timing(float(median), float(q1), float(q3), float(low), float(high), float(per_step.mean()),
                  len(samples), batch)

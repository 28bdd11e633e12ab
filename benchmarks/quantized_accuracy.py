"""How far 8-bit state drifts from the 32-bit rule: bitsandbytes' setting
(params randn * 0.1, grads randn * 0.01, 16384 float32 elements, 50 steps),
the two runs with their own states, the 32-bit params set to the 8-bit ones
every 10 steps. Prints, per rule case of tests/cases.py that creates every
state array, the worst step's mean absolute error of the params and mean
relative error |p32 - p8| / (|p32| + 1e-9).

    python benchmarks/quantized_accuracy.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

import fusedopt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from cases import FULL_STATE_CASES  # noqa: E402

EXTRA = [("SGD", {"lr": 0.01, "momentum": 0.9}), ("RMSprop", {"lr": 0.01, "alpha": 0.9})]  # bitsandbytes' settings


def drift(name, kwargs, size=4096 * 4, steps=50, resync=10, seed=32):
    rng = np.random.default_rng(seed)
    start = (rng.standard_normal(size) * 0.1).astype(np.float32)
    full, low = start.copy(), start.copy()
    cls = getattr(fusedopt, name)
    opt32, opt8 = cls([full], **kwargs), cls([low], **kwargs, state_bits=8)
    worst_abs = worst_rel = 0.0
    for step in range(1, steps + 1):
        grad = (rng.standard_normal(size) * 0.01).astype(np.float32)
        opt32.step([grad])
        opt8.step([grad])
        error = np.abs(full.astype(np.float64) - low)
        worst_abs = max(worst_abs, float(error.mean()))
        worst_rel = max(worst_rel, float((error / (np.abs(full) + 1e-9)).mean()))
        if step % resync == 0:
            full[...] = low
    return worst_abs, worst_rel


if __name__ == "__main__":
    print(f"{'rule':10s} {'options':42s} {'mean abs':>9s} {'mean rel':>9s}")
    for name, kwargs in [*FULL_STATE_CASES, *EXTRA]:
        worst_abs, worst_rel = drift(name, kwargs)
        print(f"{name:10s} {str(kwargs):42s} {worst_abs:9.2e} {worst_rel:9.2e}")

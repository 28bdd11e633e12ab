"""8-bit state against 32-bit and all-bfloat16 AdamW: one step's median time
per size, side by side in one run (the modes interleaved, so that a busy
machine slows them alike), with the ratio to float32 AdamW, the bytes the
core counts per element and the memory roof of those bytes.

    python benchmarks/quantized_step.py [--sizes 1e5,1e6,1e7] [--threads 2] [--repeats 21]

Modes: AdamW float32 (28 B/element), AdamW all-bfloat16 (14), AdamW8bit with
float32 params (16) and with bfloat16 params (10, plus 8 B per block of 256
for the scales). The roof is `fusedopt._core.roof` over float32 arrays moving
the same number of bytes per element; "of roof" is roof time / step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt.precision import bfloat16

MODES = {  # name: (class, param dtype, storage options, bytes per element)
    "AdamW float32": (fusedopt.AdamW, np.float32, {}, 28),
    "AdamW bfloat16": (fusedopt.AdamW, bfloat16, {}, 14),
    "AdamW8bit float32 params": (fusedopt.AdamW8bit, np.float32, {}, 16),
    "AdamW8bit bfloat16 params": (fusedopt.AdamW8bit, bfloat16, {}, 10),
}


def roof_arrays(n, bytes_per_element):
    """float32 arrays for _core.roof moving about `bytes_per_element` per element: k read-write
    arrays and one read (8k + 4 bytes), scaled down to as many elements."""
    written = max(1, round((bytes_per_element - 4) / 8))
    elements = int(n * bytes_per_element / (8 * written + 4))
    return [[np.zeros(elements, np.float32) for _ in range(written)] + [np.zeros(elements, np.float32)]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{fusedopt.cpu_features()['isa']}, {args.threads} threads, median of {args.repeats} steps "
          "(min-max), interleaved")
    for n in (int(float(s)) for s in args.sizes.split(",")):
        steps, times = {}, {}
        for name, (cls, dtype, options, _) in MODES.items():
            w = (rng.standard_normal(n) * 0.1).astype(dtype)
            g = (rng.standard_normal(n) * 0.01).astype(dtype)
            opt = cls([w], **options)
            steps[name] = lambda opt=opt, g=g: opt.step([g])
            times[name] = []
        roofs = {b: roof_arrays(n, b) for _, _, _, b in MODES.values()}
        roof_times = {b: [] for b in roofs}
        with fusedopt.threads(args.threads):
            for _ in range(args.repeats):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
                for b, arrays in roofs.items():
                    start = time.perf_counter()
                    _core.roof(arrays)
                    roof_times[b].append(time.perf_counter() - start)
        base = statistics.median(times["AdamW float32"])
        print(f"\n{n:,} elements")
        for name, (_, _, _, b) in MODES.items():
            median = statistics.median(times[name])
            roof = statistics.median(roof_times[b])
            print(f"  {name:27s} {median * 1e3:8.3f} ms ({min(times[name]) * 1e3:.3f}-{max(times[name]) * 1e3:.3f})"
                  f"  x{base / median:4.2f} vs float32  {b:2d} B/elem  {roof / median:4.0%} of roof")


if __name__ == "__main__":
    main()

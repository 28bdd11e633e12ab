"""Where do more threads start to pay? Measures, per rule and size, one
fusedopt step on 1 thread and on N threads with the serial cutoff disabled,
and prints the crossover in bytes moved per step: the value for
``g_serial_cutoff_bytes`` in csrc/parallel.cpp.

    python benchmarks/serial_cutoff.py [--rules adam,sgd] [--dtypes float32,float64] [--threads 2]

Run it on an idle machine: a busy one makes every multi-threaded step wait
for a core.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt.bench import implementations, rules, workloads
from fusedopt.bench.precisions import PRECISIONS
from fusedopt.bench.report import format_time
from fusedopt.bench.timing import measure

SIZES = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]


def step_time(rule, n, dtype, threads, seconds):
    params, grads = workloads.make_arrays(workloads.single_tensor(n), dtype)
    impl = implementations.make("fusedopt", threads, fusedopt.cpu_features()["isa"])
    with impl.prepared(rule, PRECISIONS[np.dtype(dtype).name], params, [grads]) as step:
        return measure(step, seconds=seconds).median


def crossover(points):
    """Bytes where the N-thread step becomes faster for good, interpolated
    log-linearly between the last size where it is not and the next; None if
    it never is, 0 if it always is."""
    # points: (bytes, ratio = time on N threads / time on 1 thread), by size
    last_slower = max((i for i, (_, ratio) in enumerate(points) if ratio >= 1), default=None)
    if last_slower is None:
        return 0
    if last_slower == len(points) - 1:
        return None
    (b0, r0), (b1, r1) = points[last_slower], points[last_slower + 1]
    fraction = math.log(r0) / (math.log(r0) - math.log(r1))
    return math.exp(math.log(b0) + fraction * (math.log(b1) - math.log(b0)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=",".join(r.key for r in rules.RULES))
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--threads", type=int, default=max(2, fusedopt.get_num_threads()))
    parser.add_argument("--seconds", type=float, default=0.1, help="per measurement")
    args = parser.parse_args()

    previous = _core.set_serial_cutoff_bytes(0)  # every step takes the threaded path
    found = []
    try:
        for rule in map(rules.rule_named, args.rules.split(",")):
            for dtype in map(np.dtype, args.dtypes.split(",")):
                print(f"\n{rule.key} {dtype.name} ({rule.bytes_per_element(dtype)} bytes/element)")
                print(f"{'elements':>10} {'bytes':>11} {'1 thread':>10} {f'{args.threads} threads':>10} {'ratio':>6}")
                points = []
                for n in SIZES:
                    one = step_time(rule, n, dtype, 1, args.seconds)
                    many = step_time(rule, n, dtype, args.threads, args.seconds)
                    moved = n * rule.bytes_per_element(dtype)
                    points.append((moved, many / one))
                    print(f"{n:>10,} {moved:>11,} {format_time(one):>10} {format_time(many):>10} {many / one:>6.2f}")
                bytes_ = crossover(points)
                found.append((rule.key, dtype.name, bytes_))
                print("crossover:", "never (within these sizes)" if bytes_ is None else f"{bytes_:,.0f} bytes")
    finally:
        _core.set_serial_cutoff_bytes(previous)

    print(f"\ncrossover in bytes moved per step, 1 vs {args.threads} threads:")
    for key, dtype, bytes_ in found:
        print(f"  {key:14s} {dtype:8s} {'never' if bytes_ is None else f'{bytes_:>12,.0f}'}")
    known = [b for _, _, b in found if b is not None]
    if known:
        print(f"median {statistics.median(known):,.0f}, largest {max(known):,.0f} "
              f"(the current cutoff is {previous:,} bytes)")


if __name__ == "__main__":
    main()

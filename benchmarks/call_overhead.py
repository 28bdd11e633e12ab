"""Where the time of a small step goes: Python and binding overhead against
the kernel.

For each rule: one step on a tensor with no elements (nothing but the
call), with 200 such tensors (the cost per tensor), and on 1e3 elements;
the same through the core's binding directly (no Python method) and for
the roof kernel (the cheapest binding with the same arrays). The kernel's
share at 1e3 elements is the 1e3 time minus the empty time.

    python benchmarks/call_overhead.py [--rules adam] [--dtype float32] [--size 1000]
"""

from __future__ import annotations

import argparse

import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt.bench import rules
from fusedopt.bench.report import format_time
from fusedopt.bench.timing import measure


def timed(step, seconds):
    return measure(step, seconds=seconds).median


def split(rule, dtype, size, seconds):
    def optimizer(sizes):
        params = [np.ones(n, dtype) for n in sizes]
        grads = [np.full(n, 1e-3, dtype) for n in sizes]
        return getattr(fusedopt, rule.optimizer)(params, **rule.kwargs), grads

    def roof_tensors(sizes):
        return [[np.ones(n, dtype), *(np.zeros(n, dtype) for _ in rule.state_keys), np.ones(n, dtype)]
                for n in sizes]

    with fusedopt.threads(1):
        empty, empty_grads = optimizer([0])
        many, many_grads = optimizer([0] * 200)
        full, full_grads = optimizer([size])
        rows = {
            "pybind11 call, no work (_core.num_threads)": timed(_core.num_threads, seconds),
            "opt.step, 1 empty tensor": timed(lambda: empty.step(empty_grads), seconds),
            "_core step directly, 1 empty tensor": timed(
                lambda: empty.rule.step(empty.param_groups, empty_grads, empty.state), seconds),
            "roof, 1 empty tensor": timed(lambda t=roof_tensors([0]): _core.roof(t), seconds),
            "opt.step, 200 empty tensors": timed(lambda: many.step(many_grads), seconds),
            "roof, 200 empty tensors": timed(lambda t=roof_tensors([0] * 200): _core.roof(t), seconds),
            f"opt.step, {size:,} elements": timed(lambda: full.step(full_grads), seconds),
            f"roof, {size:,} elements": timed(lambda t=roof_tensors([size]): _core.roof(t), seconds),
        }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default="adam,sgd_momentum")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    for rule in map(rules.rule_named, args.rules.split(",")):
        rows = split(rule, np.dtype(args.dtype), args.size, args.seconds)
        print(f"\n{rule.key} {args.dtype}, 1 thread")
        for name, seconds in rows.items():
            print(f"  {name:45s} {format_time(seconds):>10}")
        values = list(rows.values())
        fixed, direct, roof_fixed = values[1], values[2], values[3]
        per_tensor = (values[4] - fixed) / 199
        roof_per_tensor = (values[5] - roof_fixed) / 199
        step_kernel, roof_kernel = values[6] - fixed, values[7] - roof_fixed
        print(f"  => fixed cost per step {format_time(fixed)} (Python method {format_time(fixed - direct)}, "
              f"core {format_time(direct)}; the roof's {format_time(roof_fixed)})")
        print(f"     per tensor {format_time(per_tensor)} (the roof's {format_time(roof_per_tensor)})")
        print(f"     kernel at {args.size:,} elements {format_time(step_kernel)} (the roof's "
              f"{format_time(roof_kernel)}): {100 * step_kernel / values[6]:.0f}% of the step")


if __name__ == "__main__":
    main()

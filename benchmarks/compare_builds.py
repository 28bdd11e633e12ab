"""Two installs of fusedopt timed side by side: is a change slower anywhere?

Two timings of the same build taken minutes apart on a shared machine can
differ by 10% or more, so a before/after comparison made of two separate
benchmark runs says little. Here each install runs in its own interpreter,
kept alive for the whole comparison, and the two take turns: every round
times every case once in each (the order alternating), and the ratio
new/old is taken within the round. The table gives the medians and the
median ratio with its range over the rounds.

A case is RULE:ELEMENTS:THREADS, e.g. sgd_momentum:1e5:2 (float32, one
tensor, the thread count fixed). RULE is one of the keys of RULES below.

    python benchmarks/compare_builds.py --old /path/to/old/venv/bin/python \\
        [--new python] [--rounds 15] sgd_momentum:0:1 adam:1e3:1 sgd_momentum:1e5:2

The old interpreter needs fusedopt (any version with these optimizers) and
NumPy; this file is all it runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

RULES = {
    "sgd_momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
    "adadelta": ("Adadelta", {}),
    "rmsprop_centered_momentum": ("RMSprop", {"lr": 1e-3, "momentum": 0.9, "centered": True}),
}


def worker(cases: list[str]) -> None:
    """The side each interpreter runs: a line "go" on stdin times every case once."""
    import time

    import numpy as np

    import fusedopt

    made = []
    for case in cases:
        rule, elements, threads = case.split(":")
        n = int(float(elements))
        rng = np.random.default_rng(0)
        param = rng.standard_normal(n).astype(np.float32)
        grad = (rng.standard_normal(n) * 0.01).astype(np.float32)
        name, kwargs = RULES[rule]
        steps = max(50, int(3e6 / max(n, 300)))  # about 0.1 s of steps per timing
        made.append((getattr(fusedopt, name)([param], **kwargs), [grad], int(threads), steps))
    for _ in sys.stdin:
        times = []
        for opt, grads, threads, steps in made:
            with fusedopt.threads(threads):
                for _ in range(10):
                    opt.step(grads)
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(steps):
                        opt.step(grads)
                    best = min(best, (time.perf_counter() - start) / steps)
            times.append(best)
        print(" ".join(repr(t) for t in times), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the interpreter of the old install")
    parser.add_argument("--new", default=sys.executable, help="the interpreter of the new install (default: this one)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("cases", nargs="+", metavar="RULE:ELEMENTS:THREADS")
    args = parser.parse_args()
    for case in args.cases:
        parts = case.split(":")
        if len(parts) != 3 or parts[0] not in RULES:
            parser.error(f"a case is RULE:ELEMENTS:THREADS with RULE one of {', '.join(RULES)}, got {case!r}")

    env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}  # an editable install must print nothing
    sides = {name: subprocess.Popen([python, __file__, "--worker", *args.cases], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env=env)
             for name, python in (("old", args.old), ("new", args.new))}
    times: dict[str, list[list[float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            side = sides[name]
            side.stdin.write("go\n")
            side.stdin.flush()
            times[name].append([float(t) for t in side.stdout.readline().split()])
    for side in sides.values():
        side.stdin.close()
        side.wait()

    print(f"{args.rounds} rounds, old: {args.old}, new: {args.new}")
    print("| case | old | new | new/old [range] |")
    print("|---|---:|---:|---:|")
    for i, case in enumerate(args.cases):
        old = [row[i] for row in times["old"]]
        new = [row[i] for row in times["new"]]
        ratios = [b / a for a, b in zip(old, new)]
        print(f"| {case} | {statistics.median(old) * 1e6:.3f} µs | {statistics.median(new) * 1e6:.3f} µs | "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()

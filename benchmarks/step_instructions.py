"""Instructions per step of a small step, counted by valgrind's callgrind:
the fixed cost of a call, free of the timing noise of a shared machine.

A step that moves a few KB takes about a microsecond, and on a shared VM
two runs of the same code differ by 2x in time; the instruction count is
the same to the last few. Each row runs `steps` steps under callgrind and
counts only what runs inside the loop (functools.reduce is the C function
callgrind switches collection on for, so imports and setup are left out).
Give `--python` more than once to compare builds side by side, e.g. an
installed release against the working tree:

    python benchmarks/step_instructions.py --python /path/to/old/venv/bin/python --python python

Valgrind reports a CPU without AVX-512, so the AVX2 kernels run; the count
is of the x86 instructions valgrind executes, not of time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# The measured program: `steps` steps of one optimizer on one float32 tensor, on one thread.
PROGRAM = """
import functools, sys
import numpy as np
import fusedopt
rule, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fusedopt.set_num_threads(1)
params, grads = [np.ones(size, np.float32)], [np.full(size, 1e-3, np.float32)]
kwargs = {"momentum": 0.9} if rule == "SGD" else {}
optimizer = getattr(fusedopt, rule)(params, lr=1e-3, **kwargs)
for _ in range(10):
    optimizer.step(grads)
functools.reduce(lambda _, __: optimizer.step(grads), range(steps), None)
"""


def instructions_per_step(python: str, rule: str, size: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "steps.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", "--toggle-collect=functools_reduce",
             f"--callgrind-out-file={os.path.join(folder, 'out')}", python, script, rule, str(size), str(steps)],
            capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind on {python} failed:\n{result.stderr[-2000:]}")
    return int(found.group(1)) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="an interpreter with fusedopt installed (repeatable)")
    parser.add_argument("--rules", default="Adam,SGD,RMSprop")
    parser.add_argument("--sizes", default="0,1000")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    pythons = args.python or [sys.executable]
    print(f"{'rule':8s} {'size':>6s} " + " ".join(f"{p[-40:]:>40s}" for p in pythons))
    for rule in args.rules.split(","):
        for size in (int(float(s)) for s in args.sizes.split(",")):
            counts = [instructions_per_step(p, rule, size, args.steps) for p in pythons]
            print(f"{rule:8s} {size:>6d} " + " ".join(f"{c:40.0f}" for c in counts), flush=True)


if __name__ == "__main__":
    main()

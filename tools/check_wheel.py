"""Checks on an installed release wheel that the test suite cannot make:
fusedopt runs on the libomp the wheel bundles, in whichever order fusedopt and
torch (with its own libgomp) are imported, and both runtimes' threads work.

    python tools/check_wheel.py         # with the venv's python; exits non-zero on a failure

tools/ci_wheel.sh runs it against the installed wheel; docs/wheel.md says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Run in a fresh interpreter per import order: the first import decides which
# libraries are loaded, and into which scope.
CHILD = r"""
import json, os, sys
for name in sys.argv[1].split(","):
    __import__(name)
import numpy as np, threadpoolctl, torch, fusedopt
from fusedopt import _core

def fused_adam_on_two_threads():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1_000_000).astype(np.float32); r = w.copy()
    fused, ref = fusedopt.Adam([w], amsgrad=True), fusedopt.reference.Adam([r], amsgrad=True)
    with fusedopt.threads(2):
        for _ in range(3):
            g = rng.standard_normal(w.size).astype(np.float32); fused.step([g]); ref.step([g])
    return bool(np.array_equal(w, r)), _core.last_team_size()

equal_before, team_before = fused_adam_on_two_threads()
torch.set_num_threads(2)
x = torch.arange(4_000_000, dtype=torch.float64)
torch_sum = float((x * 2.0).sum())  # a parallel region in torch's runtime
equal_after, team_after = fused_adam_on_two_threads()
print(json.dumps({
    "fusedopt_dir": os.path.dirname(os.path.realpath(fusedopt.__file__)),
    "openmp": fusedopt.cpu_features()["openmp"],
    "pools": [os.path.realpath(p["filepath"]) for p in threadpoolctl.threadpool_info()
              if p["user_api"] == "openmp"],
    "torch_dir": os.path.dirname(os.path.realpath(torch.__file__)),
    "torch_sum_right": torch_sum == 2.0 * (4_000_000 - 1) * 4_000_000 / 2,
    "fused_equal": [equal_before, equal_after], "fused_team": [team_before, team_after],
}))
"""


def check(import_order: str) -> list[str]:
    """The problems seen when the modules in import_order are imported first."""
    result = subprocess.run([sys.executable, "-c", CHILD, import_order],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return [f"the child process failed:\n{result.stderr}"]
    seen = json.loads(result.stdout)
    bundled_dir = os.path.join(os.path.dirname(seen["fusedopt_dir"]), "fusedopt.libs")
    runtime = os.path.realpath(seen["openmp"].split(" (")[0])
    problems = []
    if os.path.dirname(runtime) != bundled_dir or not os.path.basename(runtime).startswith("libomp"):
        problems.append(f"fusedopt runs on {runtime}, not the libomp in {bundled_dir}")
    if runtime not in seen["pools"]:
        problems.append(f"threadpoolctl does not see {runtime}: {seen['pools']}")
    if not any(pool.startswith(seen["torch_dir"] + os.sep) for pool in seen["pools"]):
        problems.append(f"torch's own OpenMP runtime is not loaded: {seen['pools']}")
    if not seen["torch_sum_right"]:
        problems.append("torch's parallel sum is wrong")
    if seen["fused_equal"] != [True, True] or seen["fused_team"] != [2, 2]:
        problems.append(f"fusedopt on 2 threads: equal {seen['fused_equal']}, teams {seen['fused_team']}")
    print(f"import {import_order}: fusedopt on {runtime}; OpenMP pools {seen['pools']}")
    return problems


def main() -> int:
    problems = [f"import {order}: {p}" for order in ("fusedopt,torch", "torch,fusedopt") for p in check(order)]
    for problem in problems:
        print("FAILED", problem, file=sys.stderr)
    print("check_wheel:", "FAILED" if problems else "all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

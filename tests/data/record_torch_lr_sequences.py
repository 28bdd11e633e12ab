"""Record torch.optim.lr_scheduler's sequences for tests/test_lr_scheduler.py.

Runs every case of TORCH_CASES on a real torch optimizer and writes the lrs
and momenta (beta1 for Adam) after construction and after each step to
torch_lr_sequences.json beside this script. The tests compare fusedopt with
that file, so they pin torch's behaviour even where torch is not installed.
Rerun it after adding or changing a case, from the repository root:

    PYTHONPATH=python python tests/data/record_torch_lr_sequences.py
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

TESTS = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
import test_lr_scheduler as cases  # noqa: E402  (the case table lives with the tests)

OUTPUT = pathlib.Path(__file__).resolve().parent / "torch_lr_sequences.json"


def main() -> None:
    recorded = {}
    for case in cases.TORCH_CASES:
        optimizer = cases.make_torch_optimizer(case.kind, case.lrs)
        trajectory = cases.run_case(torch.optim.lr_scheduler, optimizer, case)
        recorded[case.id] = {"lr": trajectory["lr"], "momentum": trajectory["momentum"]}

    # One line per case keeps the file small and its diffs readable.
    lines = [f"    {json.dumps(name)}: {json.dumps(values)}" for name, values in recorded.items()]
    OUTPUT.write_text(
        "{\n"
        f'  "torch_version": {json.dumps(torch.__version__)},\n'
        '  "cases": {\n' + ",\n".join(lines) + "\n  }\n}\n"
    )
    print(f"wrote {len(recorded)} cases to {OUTPUT}")


if __name__ == "__main__":
    main()

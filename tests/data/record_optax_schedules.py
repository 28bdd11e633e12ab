"""Record optax's schedule values for tests/test_schedules.py.

Builds every case of OPTAX_CASES with optax, evaluates it in float64 at each
count of COUNTS, and writes optax_schedule_values.json beside this script.
The tests compare fusedopt.schedules with that file and never import optax.
Rerun it after adding or changing a case, from the repository root:

    pip install optax jax jaxlib
    PYTHONPATH=python python tests/data/record_optax_schedules.py
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)  # float64, as fusedopt's Python floats

import optax  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
import test_schedules as cases  # noqa: E402  (the case table lives with the tests)

OUTPUT = pathlib.Path(__file__).resolve().parent / "optax_schedule_values.json"


def main() -> None:
    values = {}
    for case_id, spec in cases.OPTAX_CASES:
        schedule = cases.build(optax.schedules, spec)
        values[case_id] = [float(schedule(count)) for count in cases.COUNTS]

    lines = [f"    {json.dumps(case_id)}: {json.dumps(row)}" for case_id, row in values.items()]
    OUTPUT.write_text(
        "{\n"
        f'  "optax_version": {json.dumps(optax.__version__)},\n'
        f'  "counts": {json.dumps(cases.COUNTS)},\n'
        '  "values": {\n' + ",\n".join(lines) + "\n  }\n}\n"
    )
    print(f"wrote {len(values)} cases to {OUTPUT}")


if __name__ == "__main__":
    main()

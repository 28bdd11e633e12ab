"""fusedopt.schedules against optax.schedules, and against the formulas by hand.

Each entry of OPTAX_CASES names a schedule factory and its arguments, which
are optax's, so the same entry builds either library's schedule. The values
optax gives (in float64) at every count of COUNTS are recorded in
data/optax_schedule_values.json by data/record_optax_schedules.py; the tests
never need optax or JAX themselves.
"""

from __future__ import annotations

import json
import math
import pathlib
from types import ModuleType
from typing import Any

import pytest

from fusedopt import schedules
from fusedopt.schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    warmup_cosine_decay_schedule,
)

OPTAX_FIXTURE = pathlib.Path(__file__).parent / "data" / "optax_schedule_values.json"
COUNTS = list(range(0, 161))  # past the end of every case

# (id, (factory name, keyword arguments)); join_schedules nests such specs.
Spec = tuple[str, dict[str, Any]]
OPTAX_CASES: list[tuple[str, Spec]] = [
    ("constant", ("constant_schedule", {"value": 0.3})),
    ("piecewise_constant", ("piecewise_constant_schedule",
        {"init_value": 0.1, "boundaries_and_scales": {30: 0.5, 10: 0.1, 60: 2.0, 61: 0.0}})),
    ("piecewise_constant-no-boundaries", ("piecewise_constant_schedule", {"init_value": 0.1})),
    ("exponential_decay", ("exponential_decay",
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.8})),
    ("exponential_decay-staircase-begin-floor", ("exponential_decay",
        {"init_value": 0.5, "transition_steps": 7, "decay_rate": 0.5, "transition_begin": 15,
         "staircase": True, "end_value": 0.02})),
    ("exponential_decay-growth-capped", ("exponential_decay",
        {"init_value": 0.01, "transition_steps": 4, "decay_rate": 1.1, "end_value": 0.3})),
    ("exponential_decay-no-transition", ("exponential_decay",
        {"init_value": 0.2, "transition_steps": 0, "decay_rate": 0.5})),
    ("exponential_decay-zero-rate", ("exponential_decay",
        {"init_value": 0.2, "transition_steps": 5, "decay_rate": 0.0})),
    ("exponential_decay-negative-begin", ("exponential_decay",
        {"init_value": 1.0, "transition_steps": 3, "decay_rate": 0.9, "transition_begin": -5})),
    ("cosine_decay", ("cosine_decay_schedule", {"init_value": 0.5, "decay_steps": 80})),
    ("cosine_decay-alpha-exponent", ("cosine_decay_schedule",
        {"init_value": 2.0, "decay_steps": 120, "alpha": 0.1, "exponent": 2.0})),
    ("warmup_cosine_decay", ("warmup_cosine_decay_schedule",
        {"init_value": 0.0, "peak_value": 1e-3, "warmup_steps": 10, "decay_steps": 100,
         "end_value": 1e-5})),
    ("warmup_cosine_decay-no-warmup-exponent", ("warmup_cosine_decay_schedule",
        {"init_value": 0.5, "peak_value": 0.4, "warmup_steps": 0, "decay_steps": 90,
         "exponent": 0.5})),
    ("linear", ("linear_schedule",
        {"init_value": 1.0, "end_value": 0.01, "transition_steps": 100})),
    ("linear-begin-increasing", ("linear_schedule",
        {"init_value": 0.0, "end_value": 0.5, "transition_steps": 30, "transition_begin": 20})),
    ("linear-no-transition", ("linear_schedule",
        {"init_value": 0.7, "end_value": 0.1, "transition_steps": -1})),
    ("cosine_onecycle", ("cosine_onecycle_schedule", {"transition_steps": 100, "peak_value": 0.1})),
    ("cosine_onecycle-custom", ("cosine_onecycle_schedule",
        {"transition_steps": 37, "peak_value": 2.0, "pct_start": 0.2, "div_factor": 10.0,
         "final_div_factor": 100.0})),
    ("cosine_onecycle-no-warmup", ("cosine_onecycle_schedule",
        {"transition_steps": 50, "peak_value": 1.0, "pct_start": 0.01})),
    ("join", ("join_schedules", {
        "schedules": [
            ("linear_schedule", {"init_value": 0.0, "end_value": 1.0, "transition_steps": 10}),
            ("constant_schedule", {"value": 1.0}),
            ("exponential_decay", {"init_value": 1.0, "transition_steps": 5, "decay_rate": 0.5}),
        ],
        "boundaries": [10, 30],
    })),
]


def build(module: ModuleType, spec: Spec):
    """The schedule `spec` describes, from fusedopt.schedules or from optax."""
    name, kwargs = spec
    if name == "join_schedules":
        parts = [build(module, part) for part in kwargs["schedules"]]
        return module.join_schedules(parts, kwargs["boundaries"])
    return getattr(module, name)(**kwargs)


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(OPTAX_FIXTURE.read_text())


@pytest.mark.parametrize("case_id, spec", OPTAX_CASES, ids=[case_id for case_id, _ in OPTAX_CASES])
def test_same_values_as_optax(case_id: str, spec: Spec, recorded: dict) -> None:
    schedule = build(schedules, spec)
    expected = recorded["values"][case_id]
    assert recorded["counts"] == COUNTS
    for count, value in zip(COUNTS, expected, strict=True):
        assert schedule(count) == pytest.approx(value, rel=1e-12, abs=1e-18), f"count {count}"
        assert type(schedule(count)) is float


def test_recorded_values_cover_every_case(recorded: dict) -> None:
    assert sorted(recorded["values"]) == sorted(case_id for case_id, _ in OPTAX_CASES), (
        "stale fixture: run tests/data/record_optax_schedules.py"
    )


# ---------------------------------------------------------------------------
# Points checked by hand against the formulas

HAND_CHECKED = [
    ("constant", constant_schedule(0.3), [(0, 0.3), (10_000, 0.3)]),
    (
        "piecewise_constant",
        piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.01}),
        [(0, 1.0), (99, 1.0), (100, 0.1), (199, 0.1), (200, 0.001), (10_000, 0.001)],
    ),
    (
        "exponential_decay",
        exponential_decay(1.0, transition_steps=10, decay_rate=0.5),
        [(0, 1.0), (10, 0.5), (15, 0.5**1.5), (20, 0.25)],
    ),
    (
        "exponential_decay-staircase-begin-floor",
        exponential_decay(1.0, 10, 0.5, transition_begin=5, staircase=True, end_value=0.2),
        [(5, 1.0), (14, 1.0), (15, 0.5), (25, 0.25), (35, 0.2), (1_000, 0.2)],
    ),
    (
        "cosine_decay",
        cosine_decay_schedule(2.0, decay_steps=100),
        [(0, 2.0), (50, 1.0), (100, 0.0), (150, 0.0)],
    ),
    (
        "cosine_decay-alpha-exponent",
        cosine_decay_schedule(2.0, decay_steps=100, alpha=0.1, exponent=2.0),
        [(0, 2.0), (50, 2.0 * (0.9 * 0.25 + 0.1)), (100, 0.2)],
    ),
    (
        "linear",
        linear_schedule(1.0, 0.0, transition_steps=10, transition_begin=5),
        [(0, 1.0), (5, 1.0), (10, 0.5), (15, 0.0), (100, 0.0)],
    ),
    (
        "warmup_cosine_decay",
        warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110, end_value=0.1),
        [(0, 0.0), (5, 0.5), (10, 1.0), (60, 0.55), (110, 0.1), (500, 0.1)],
    ),
    (
        "cosine_onecycle",
        cosine_onecycle_schedule(100, peak_value=1.0),
        # start peak / 25, peak at 0.3 * 100, halfway at 15, peak / 25 / 1e4 at the end
        [(0, 0.04), (15, 0.52), (30, 1.0), (100, 4e-6), (200, 4e-6)],
    ),
    (
        "join",
        join_schedules([constant_schedule(1.0), linear_schedule(1.0, 0.0, 10)], [20]),
        [(0, 1.0), (19, 1.0), (20, 1.0), (25, 0.5), (30, 0.0)],
    ),
]


@pytest.mark.parametrize(
    "schedule, points", [pytest.param(s, p, id=name) for name, s, p in HAND_CHECKED]
)
def test_hand_checked_points(schedule, points) -> None:
    for count, value in points:
        assert schedule(count) == pytest.approx(value, rel=1e-12, abs=1e-15), f"count {count}"


def test_join_counts_each_schedule_from_its_own_start() -> None:
    seen = []
    joined = join_schedules([lambda c: 0.0, lambda c: seen.append(c) or 1.0], [7])
    joined(7), joined(9)
    assert seen == [0, 2]


def test_exponential_decay_is_continuous_without_staircase() -> None:
    decay = exponential_decay(1.0, transition_steps=10, decay_rate=0.1)
    values = [decay(count) for count in range(100)]
    assert all(later < earlier for earlier, later in zip(values[1:], values[2:]))
    assert math.isclose(values[10] / values[11], values[50] / values[51], rel_tol=1e-12)


# (id, what the ValueError must name, the call)
BAD_ARGUMENTS = [
    ("piecewise-negative-scale", "boundaries_and_scales",
     lambda: piecewise_constant_schedule(1.0, {10: -0.1})),
    ("exponential-negative-rate", "decay_rate", lambda: exponential_decay(1.0, 10, -0.5)),
    ("cosine-zero-decay_steps", "decay_steps", lambda: cosine_decay_schedule(1.0, 0)),
    ("warmup-longer-than-schedule", "decay_steps",
     lambda: warmup_cosine_decay_schedule(0, 1, 10, 10)),
    ("onecycle-zero-steps", "transition_steps", lambda: cosine_onecycle_schedule(0, 1.0)),
    ("join-boundary-count", "boundaries",
     lambda: join_schedules([constant_schedule(1)] * 2, [1, 2])),
]


@pytest.mark.parametrize("argument, make", [pytest.param(a, m, id=n) for n, a, m in BAD_ARGUMENTS])
def test_bad_arguments_raise_naming_the_argument(argument, make) -> None:
    with pytest.raises(ValueError, match=argument):
        make()

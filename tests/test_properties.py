"""Property tests (hypothesis): random rule and options from the table
(cases.py), dtype, number and sizes of arrays (0..5000 elements), one or two
param groups, thread count (1, 2; the parallel path forced even for tiny
arrays), SIMD target and several steps, each held bitwise to
fusedopt.reference; the non-finite guard; resuming from a checkpoint.

The default run is bounded and reproducible: FUSEDOPT_HYPOTHESIS_EXAMPLES
examples per test (60 unless set), derandomized, no deadline. A long run:

    FUSEDOPT_HYPOTHESIS_EXAMPLES=5000 python -m pytest tests/test_properties.py --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedopt
from cases import CASE_IDS, CASES, all_arrays, default_lr, make_pair, resume_and_uninterrupted
from fusedopt import _core

EXAMPLES = int(os.environ.get("FUSEDOPT_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TARGETS = fusedopt.cpu_features()["supported_targets"]
POLICIES = ("skip", "raise")

cases = st.sampled_from(list(zip(CASE_IDS, CASES)))
dtypes = st.sampled_from([np.float32, np.float64])
sizes = st.lists(st.integers(0, 5000), min_size=1, max_size=5)


@contextlib.contextmanager
def run_on(target: str, thread_count: int):
    """Steps on ``target`` with ``thread_count`` threads; with 2, even the
    smallest step takes the parallel path. Restores everything after."""
    chosen = fusedopt.cpu_features()["isa"]
    previous_cutoff = _core.set_serial_cutoff_bytes(0 if thread_count > 1 else 1 << 62)
    _core.select_target(target)
    try:
        with fusedopt.threads(thread_count):
            yield
    finally:
        _core.select_target(chosen)
        _core.set_serial_cutoff_bytes(previous_cutoff)


def gradients(seed: int, shapes, dtype, scale: float):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in shapes]


def bits(array: np.ndarray) -> np.ndarray:
    """The array's bit patterns: equal exactly when every element is the
    same float, NaN payloads and signed zeros included."""
    return array.view(np.uint32 if array.dtype == np.float32 else np.uint64)


def assert_bitwise_equal(got, want, when: str):
    """Params, every state array and every scalar state value, bit for bit."""
    got, want = all_arrays(got), all_arrays(want)
    assert got.keys() == want.keys(), when
    for label, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[label].dtype == value.dtype, f"{label} {when}"
            np.testing.assert_array_equal(bits(got[label]), bits(value), err_msg=f"{label} {when}")
        else:
            assert got[label] == value or (value != value and got[label] != got[label]), f"{label} {when}"


@PROPERTY
@given(case=cases, dtype=dtypes, shapes=sizes, two_groups=st.booleans(), thread_count=st.sampled_from([1, 2]),
       target=st.sampled_from(TARGETS), steps=st.integers(1, 4), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**32 - 1))
def test_every_step_matches_the_reference_bitwise(case, dtype, shapes, two_groups, thread_count, target, steps,
                                                 scale, seed):
    _, (name, kwargs) = case
    start = gradients(seed, shapes, dtype, 1.0)
    second_group = {"lr": 0.5 * default_lr(name, kwargs)} if two_groups and len(shapes) > 1 else None
    fused, ref = make_pair(name, kwargs, start, second_group=second_group)
    with run_on(target, thread_count):
        for step in range(1, steps + 1):
            grads = gradients(seed + step, shapes, dtype, scale)
            fused.step(grads)
            ref.step(grads)
            assert_bitwise_equal(fused, ref, f"after step {step}")


@PROPERTY
@given(case=cases, dtype=dtypes, shapes=sizes, policy=st.sampled_from(POLICIES),
       thread_count=st.sampled_from([1, 2]), target=st.sampled_from(TARGETS),
       bad=st.none() | st.tuples(st.integers(0, 4), st.integers(0, 4999),
                                 st.sampled_from([np.nan, np.inf, -np.inf])),
       seed=st.integers(0, 2**32 - 1))
def test_the_nonfinite_guard_changes_nothing_or_steps_as_the_reference(case, dtype, shapes, policy, thread_count,
                                                                      target, bad, seed):
    """A grad with a NaN or an infinity anywhere: nothing changes, "skip"
    returns False and "raise" names the first bad grad and element, as the
    reference does. All finite: the step is the reference's."""
    _, (name, kwargs) = case
    start = gradients(seed, shapes, dtype, 1.0)
    fused, ref = make_pair(name, {**kwargs, "nonfinite": policy}, start)
    with run_on(target, thread_count):
        fused.step(gradients(seed + 1, shapes, dtype, 1.0))  # state that is not all zeros
        ref.step(gradients(seed + 1, shapes, dtype, 1.0))
        grads = gradients(seed + 2, shapes, dtype, 1.0)
        first_bad = None
        if bad is not None:
            array, position, value = bad
            array %= len(shapes)
            if shapes[array] > 0:
                grads[array][position % shapes[array]] = value
                first_bad = array
        before = {label: value.copy() if isinstance(value, np.ndarray) else value
                  for label, value in all_arrays(fused).items()}
        outcomes = []
        for opt in (fused, ref):
            try:
                outcomes.append(opt.step(grads))
            except fusedopt.NonFiniteGradError as error:
                outcomes.append((error.index, str(error)))
    assert outcomes[0] == outcomes[1]
    assert fused.skipped_steps == ref.skipped_steps == (first_bad is not None)
    if first_bad is None:
        assert outcomes[0] is True
    else:
        assert outcomes[0] is False if policy == "skip" else outcomes[0][0] == first_bad
        assert_bitwise_equal_to_snapshot(fused, before)
    assert_bitwise_equal(fused, ref, "after the guarded step")


def assert_bitwise_equal_to_snapshot(opt, before):
    now = all_arrays(opt)
    assert now.keys() == before.keys()
    for label, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(bits(now[label]), bits(value), err_msg=label)
        else:
            assert now[label] == value, label


@PROPERTY
@given(case=cases, dtype=dtypes, shapes=st.lists(st.integers(0, 5000), min_size=2, max_size=4),
       steps=st.integers(1, 5), stop=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_a_run_resumed_from_a_checkpoint_is_bitwise_uninterrupted(case, dtype, shapes, steps, stop, seed):
    _, (name, kwargs) = case
    start = gradients(seed, shapes, dtype, 1.0)
    grads = [gradients(seed + 1 + k, shapes, dtype, 1.0) for k in range(steps)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.npz"

        def through_a_file(stopped, fresh):
            fusedopt.save(path, stopped)
            fusedopt.load(path, fresh)

        resumed, uninterrupted = resume_and_uninterrupted(name, kwargs, start, grads, min(stop, steps),
                                                          through_a_file)
    assert_bitwise_equal(resumed, uninterrupted, f"after {steps} steps, resumed after {min(stop, steps)}")

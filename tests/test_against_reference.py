"""Every rule and option of the table (cases.py) against the NumPy
reference, on every SIMD target: params and every state array after each
step."""

import numpy as np
import pytest

import fusedopt
from cases import CASE_IDS, CASES, SIZES, assert_same_state, default_lr, make_pair, random_arrays

STEPS = 10


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_sizes_around_simd_widths(target, dtype, rng, name, kwargs):
    """All the sizes around the vector widths in one optimizer, two param groups."""
    params = random_arrays(rng, SIZES, dtype)
    fused, ref = make_pair(name, kwargs, params, second_group={"lr": 0.5 * default_lr(name, kwargs)})
    for step in range(1, STEPS + 1):
        grads = random_arrays(rng, SIZES, dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_million_elements(target, dtype, rng, name, kwargs):
    """One large array with non-zero gradients: the multi-threaded path."""
    params = random_arrays(rng, [1_000_003], dtype)
    fused, ref = make_pair(name, kwargs, params)
    for step in range(1, STEPS + 1):
        grads = [g + np.copysign(dtype(0.1), g) for g in random_arrays(rng, [1_000_003], dtype)]
        assert np.all(grads[0] != 0)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_hyperparameters_edited_between_steps(dtype, rng, name, kwargs):
    """param_groups are live: a schedule that edits lr (and more) takes effect."""
    params = random_arrays(rng, [17, 1000], dtype)
    fused, ref = make_pair(name, kwargs, params)
    for step in range(1, 6):
        for opt in (fused, ref):
            opt.param_groups[0]["lr"] = 0.1 / step
        grads = random_arrays(rng, [17, 1000], dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


def test_none_grad_leaves_param_and_state_alone(rng):
    params = random_arrays(rng, [5, 6, 7], np.float32)
    fused, ref = make_pair("Adam", {}, params)
    before = [p.copy() for p in params]
    grads = random_arrays(rng, [5, 6, 7], np.float32)
    grads[1] = None
    fused.step(grads)
    ref.step(grads)
    np.testing.assert_array_equal(params[1], before[1])
    assert fused.state[1]["step"] == 0 and fused.state[0]["step"] == 1
    assert not fused.state[1]["exp_avg"].any()
    assert_same_state(fused, ref, np.float32, 1)


def test_size_zero_arrays_are_fine():
    empty = np.zeros(0, np.float32)
    opt = fusedopt.Adam([empty, np.zeros((0, 3), np.float32)])
    opt.step([np.zeros(0, np.float32), np.zeros((0, 3), np.float32)])
    assert opt.state[0]["step"] == 1


def test_multidimensional_params(rng):
    params = [rng.standard_normal((3, 4, 5)).astype(np.float32)]
    fused, ref = make_pair("Adam", {"amsgrad": True}, params)
    for step in range(1, 4):
        grads = [rng.standard_normal((3, 4, 5)).astype(np.float32)]
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, np.float32, step)

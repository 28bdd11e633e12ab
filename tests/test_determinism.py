"""Results do not depend on the thread count, on how an array is split into
pieces, or on the SIMD target: every element gets the same arithmetic."""

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from cases import CASE_IDS, CASES, all_arrays, random_arrays
from conftest import BASELINE_TARGET, SUPPORTED_TARGETS

SIZES = [1, 17, 1000, 100003, 300001]


def run(name, kwargs, dtype, steps=4, seed=5):
    rng = np.random.default_rng(seed)
    params = random_arrays(rng, SIZES, dtype)
    opt = getattr(fusedopt, name)(params, **kwargs)
    for _ in range(steps):
        opt.step(random_arrays(rng, SIZES, dtype))
    return all_arrays(opt)


def assert_bitwise_equal(got, want):
    assert got.keys() == want.keys()
    for label in want:
        np.testing.assert_array_equal(got[label], want[label], err_msg=label)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_one_and_two_threads_are_bitwise_identical(target, dtype, every_team_split, name, kwargs):
    with fusedopt.threads(1):
        one = run(name, kwargs, dtype)
    with fusedopt.threads(2):
        two = run(name, kwargs, dtype)
    assert_bitwise_equal(two, one)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_targets_agree_with_the_baseline_bitwise(dtype, name, kwargs):
    """No FMA contraction anywhere, so the widest target computes the baseline's bits."""
    chosen = fusedopt.cpu_features()["isa"]
    results = {}
    try:
        for target in SUPPORTED_TARGETS:
            _core.select_target(target)
            results[target] = run(name, kwargs, dtype)
    finally:
        _core.select_target(chosen)
    for target in SUPPORTED_TARGETS:
        assert_bitwise_equal(results[target], results[BASELINE_TARGET])


@pytest.mark.parametrize("pieces", [[1], [3, 5, 8], [7, 9, 13, 1, 2, 64], [100, 1, 1, 1]])
def test_any_split_into_pieces_gives_the_same_bits(target, dtype, pieces):
    """Updating a flat array as contiguous pieces (views) equals updating it whole:
    the scalar tail of each piece does the vector body's arithmetic."""
    rng = np.random.default_rng(9)
    n = 4099
    whole = [rng.standard_normal(n).astype(dtype) for _ in range(4)]  # w, g, m, v
    split = [a.copy() for a in whole]
    edges = np.cumsum([0] + pieces)
    edges = np.unique(np.r_[(edges * n // edges[-1]), n])
    for t in (1, 2, 3):
        fusedopt.functional.adam_(whole[0], whole[1], whole[2], np.abs(whole[3]), step=t, amsgrad=False)
        views = [[a[lo:hi] for lo, hi in zip(edges[:-1], edges[1:])] for a in split]
        fusedopt.functional.adam_(views[0], views[1], views[2], [np.abs(v) for v in views[3]], step=t)
    # np.abs made copies of v above in both runs alike; w and m carry the result.
    for a, b in zip(whole[:3], split[:3]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("name, kwargs", [("Adam", {"amsgrad": True}), ("RMSprop", {"centered": True, "momentum": 0.9}),
                                          ("SGD", {"momentum": 0.9, "nesterov": True})])
def test_more_threads_than_cores_give_the_same_bits(dtype, every_team_split, threads, name, kwargs):
    """With more threads than cores, which thread claims which chunk changes
    from step to step (a thread waiting for a core finds its share taken):
    the bits do not."""
    with fusedopt.threads(1):
        one = run(name, kwargs, dtype, steps=6)
    with fusedopt.threads(threads):
        many = run(name, kwargs, dtype, steps=6)
    assert_bitwise_equal(many, one)


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_nonfinite_grad_in_any_chunk_stops_every_thread(dtype, every_team_split, threads, where):
    """The threads agree on the verdict once every chunk is checked, whoever
    checked it: a NaN in the first or the last element changes nothing."""
    rng = np.random.default_rng(4)
    params = random_arrays(rng, SIZES, dtype)
    before = [p.copy() for p in params]
    opt = fusedopt.Adam(params, nonfinite="skip")
    grads = random_arrays(rng, SIZES, dtype)
    bad = 0 if where == "first" else len(grads) - 1
    grads[bad][0 if where == "first" else -1] = np.nan
    with fusedopt.threads(threads):
        assert opt.step(grads) is False
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    assert all(s["step"] == 0 for s in opt.state) and opt.skipped_steps == 1
    assert all(not s["exp_avg"].any() for s in opt.state)

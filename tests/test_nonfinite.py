"""The non-finite guard: Optimizer(nonfinite="apply" | "skip" | "raise").

A checked step reads the grads once more, in the same call and parallel
region as the update; a step whose grads hold a NaN or an infinity changes
nothing at all, on every SIMD target and thread count.
"""

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, reference
from cases import FULL_STATE_CASE_IDS, FULL_STATE_CASES, RULE_NAMES, assert_same_state, make_pair, random_arrays

# Sizes around the vector widths, a large array that the threads split, and
# a small last array.
SIZES = [1, 7, 37, 100_003, 33]

# (array, element) of the poisoned gradient value.
POSITIONS = {
    "first element": (0, 0),
    "last element of the last array": (4, 32),
    "tail of a 37-element array": (2, 36),      # beyond the last full vector of every target
    "middle of the large array": (3, 50_001),   # near where two threads split the work
    "last element of the large array": (3, 100_002),
}
VALUES = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def thread_count(request, parallel_everywhere):
    with fusedopt.threads(request.param):
        yield request.param


def snapshot(opt):
    """Copies of every param and state value, for bitwise comparison."""
    params = [p.copy() for group in opt.param_groups for p in group["params"]]
    state = [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in entry.items()} for entry in opt.state]
    return params, state


def assert_bitwise_unchanged(opt, before):
    """Every param and state value has the bits (and scalar types) of the snapshot."""
    params, state = snapshot(opt)
    assert len(params) == len(before[0]) and len(state) == len(before[1])
    for i, (now, then) in enumerate(zip(params, before[0])):
        assert now.tobytes() == then.tobytes(), f"params[{i}] differs"
    for i, (now, then) in enumerate(zip(state, before[1])):
        assert now.keys() == then.keys(), f"state[{i}] keys differ"
        for key in then:
            if isinstance(then[key], np.ndarray):
                assert now[key].tobytes() == then[key].tobytes(), f"state[{i}][{key!r}] differs"
            else:
                assert now[key] == then[key] and type(now[key]) is type(then[key]), f"state[{i}][{key!r}] differs"


def assert_same(opt, twin):
    """The same bits in every param and state value as the twin optimizer's."""
    assert_bitwise_unchanged(opt, snapshot(twin))


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("position", POSITIONS.values(), ids=POSITIONS.keys())
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_skip_changes_nothing(target, thread_count, rng, name, kwargs, position, value):
    params = random_arrays(rng, SIZES, np.float32)
    twin_params = [p.copy() for p in params]
    opt = getattr(fusedopt, name)(params, nonfinite="skip", **kwargs)
    twin = getattr(fusedopt, name)(twin_params, **kwargs)  # never sees the bad step, never checks
    for _ in range(2):
        grads = random_arrays(rng, SIZES, np.float32)
        assert opt.step(grads) is True
        twin.step(grads)
    assert_same(opt, twin)

    before = snapshot(opt)
    bad = random_arrays(rng, SIZES, np.float32)
    array, element = position
    bad[array][element] = value
    assert opt.step(bad) is False
    assert opt.skipped_steps == 1
    assert_bitwise_unchanged(opt, before)

    # The skipped step left no trace: the run goes on as if it never happened.
    for _ in range(2):
        grads = random_arrays(rng, SIZES, np.float32)
        assert opt.step(grads) is True
        twin.step(grads)
    assert_same(opt, twin)
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_raise_names_the_first_bad_grad_and_changes_nothing(target, thread_count, rng, name, kwargs):
    params = random_arrays(rng, SIZES, np.float64)
    opt = getattr(fusedopt, name)(params, nonfinite="raise", **kwargs)
    opt.step(random_arrays(rng, SIZES, np.float64))
    before = snapshot(opt)
    bad = random_arrays(rng, SIZES, np.float64)
    bad[3][99_999] = np.inf  # the large array, checked by the second thread
    bad[1][6] = np.nan       # an earlier, small one: this is the one named
    with pytest.raises(fusedopt.NonFiniteGradError, match=r"grads\[1\] holds a NaN or an infinity "
                                                          r"\(first at flat index 6: nan\)") as info:
        opt.step(bad)
    assert info.value.index == 1
    assert isinstance(info.value, FloatingPointError)
    assert opt.skipped_steps == 1
    assert_bitwise_unchanged(opt, before)


@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["float32", "float64"])
def test_default_applies_the_step(rng, dtype_):
    """nonfinite="apply" (the default, as torch) checks nothing: the NaN goes in."""
    params = random_arrays(rng, [10], dtype_)
    opt = fusedopt.Adam(params)
    assert opt.nonfinite == "apply"
    grads = random_arrays(rng, [10], dtype_)
    grads[0][3] = np.nan
    assert opt.step(grads) is True
    assert opt.skipped_steps == 0 and opt.state[0]["step"] == 1
    assert np.isnan(params[0][3]) and np.isfinite(np.delete(params[0], 3)).all()


def test_lion_propagates_nan_as_the_reference(rng):
    """sign(NaN) is NaN, as np.sign's: a NaN gradient is not silently a zero step."""
    params = random_arrays(rng, [9], np.float32)
    fused, ref = make_pair("Lion", {}, params)
    g = random_arrays(rng, [9], np.float32)
    g[0][4] = np.nan
    fused.step(g)
    ref.step(g)
    assert np.isnan(params[0][4])
    assert_same_state(fused, ref, np.float32, 1)


def test_created_state_is_not_recorded_by_a_skipped_step(rng):
    """A buffer that a setting turns on is born in the step that first uses
    it; a skipped step must not leave it behind (nor SGD's first-step copy)."""
    params = random_arrays(rng, [33], np.float64)
    twin_params = [p.copy() for p in params]
    opt = fusedopt.SGD(params, lr=0.1, nonfinite="skip")
    twin = fusedopt.SGD(twin_params, lr=0.1)
    for o in (opt, twin):
        o.step([np.ones(33)])
        o.param_groups[0]["momentum"] = 0.9
    assert opt.step([np.full(33, np.inf)]) is False
    assert "momentum_buffer" not in opt.state[0] and opt.state[0]["step"] == 1
    grads = random_arrays(rng, [33], np.float64)
    opt.step(grads)
    twin.step(grads)
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], grads[0])  # torch: b <- g at first
    assert_same(opt, twin)


def test_scalar_state_unchanged_by_a_skipped_step(rng):
    params = random_arrays(rng, [5], np.float64)
    opt = fusedopt.NAdam(params, nonfinite="skip")
    opt.step(random_arrays(rng, [5], np.float64))
    mu_product = opt.state[0]["mu_product"]
    assert mu_product < 1.0
    assert opt.step([np.array([0, 0, np.nan, 0, 0], np.float64)]) is False
    assert opt.state[0]["mu_product"] == mu_product and opt.state[0]["step"] == 1


def test_none_grads_are_not_checked(rng):
    params = random_arrays(rng, [4, 4], np.float32)
    opt = fusedopt.SGD(params, nonfinite="raise")
    assert opt.step([None, np.ones(4, np.float32)]) is True
    assert opt.state == [{"step": 0}, {"step": 1}]


def test_skipped_steps_counts_every_skip(rng):
    params = random_arrays(rng, [8], np.float32)
    opt = fusedopt.Lion(params, nonfinite="skip")
    results = [opt.step([np.full(8, x, np.float32)]) for x in (1.0, np.nan, np.inf, 2.0, -np.inf)]
    assert results == [True, False, False, True, False]
    assert opt.skipped_steps == 3 and opt.state[0]["step"] == 2


@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_class_takes_the_option(name):
    for policy in ("apply", "skip", "raise"):
        assert getattr(fusedopt, name)([np.zeros(3)], nonfinite=policy).nonfinite == policy
    with pytest.raises(ValueError, match="nonfinite must be one of 'apply', 'skip', 'raise', got 'ignore'"):
        getattr(fusedopt, name)([np.zeros(3)], nonfinite="ignore")


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_reference_classes_follow_the_option(rng, policy):
    params = random_arrays(rng, [9, 3], np.float64)
    fused = fusedopt.RMSprop(params, nonfinite=policy)
    ref = reference.RMSprop([p.copy() for p in params], nonfinite=policy)
    grads = random_arrays(rng, [9, 3], np.float64)
    grads[1][2] = -np.inf
    for opt in (fused, ref):
        if policy == "skip":
            assert opt.step(grads) is False
        else:
            with pytest.raises(fusedopt.NonFiniteGradError) as info:
                opt.step(grads)
            assert info.value.index == 1
        assert opt.skipped_steps == 1 and opt.state[0]["step"] == 0


# ------------------------------------------------- the per-target check kernel

@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_check_kernel_finds_every_position(target, dtype, value):
    """Every position of arrays up to 40 elements (the vector bodies and tails
    of every target) and around the kernel's 4096-element chunks."""
    for size in range(1, 41):
        for position in range(size):
            g = np.ones(size, dtype)
            g[position] = value
            assert _core.first_nonfinite([np.ones(3, dtype), g]) == 1, (size, position)
    for position in (4095, 4096, 4097, 8191, 9999):
        g = np.zeros(10_000, dtype)
        g[position] = value
        assert _core.first_nonfinite([g]) == 0, position


def test_check_kernel_accepts_every_finite_value(target, dtype):
    info = np.finfo(dtype)
    edge = np.array([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_subnormal, -info.smallest_subnormal,
                     1.0, -1.0] * 5, dtype)
    assert _core.first_nonfinite([edge, np.zeros(0, dtype), None]) is None
    assert _core.first_nonfinite([]) is None

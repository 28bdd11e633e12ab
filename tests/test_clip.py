"""Gradient clipping: fusedopt.clip_grad_norm_, clip_grad_value_ and
get_total_norm, against torch.nn.utils and NumPy, on every SIMD target, with
a result that is the same to the last bit for 1 and 2 threads."""

import math

import numpy as np
import pytest
import torch

import fusedopt
from fusedopt import _core
from cases import random_arrays

NORM_TYPES = [1.0, 2.0, 3.0, 0.5, 1.5, math.inf]
NORM_IDS = ["L1", "L2", "L3", "L0.5", "L1.5", "Linf"]

# Around the vector widths and the 32768-element reduction blocks, with
# arrays that straddle block boundaries.
SIZES = [1, 7, 17, 33, 1000, 32_767, 32_769, 100_003]

# Our total is a sum of non-negative terms in double, each of kLanes = 8
# lanes adding at most 32768 / 8 = 4096 terms in a row before the fixed-order
# combination: at most ~4096 ulp, 1e-12 relative. torch and NumPy sum in
# other orders (and torch takes per-tensor norms, then the norm of those), so
# their totals differ from ours by rounding within that bound (measured:
# 1.5e-14 at most, for p = 0.5).
NORM_RTOL = 1e-12


def torch_clip(grads, max_norm, norm_type, **kwargs):
    """torch.nn.utils.clip_grad_norm_ over tensors holding copies of grads."""
    tensors = []
    for g in grads:
        t = torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype)
        t.grad = torch.from_numpy(g.copy())
        tensors.append(t)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type, foreach=False, **kwargs)
    return total.item(), [t.grad.numpy() for t in tensors]


def numpy_norm(grads, norm_type):
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    if norm_type == math.inf:
        return float(np.max(np.abs(flat)))
    return float(np.sum(np.abs(flat) ** norm_type) ** (1.0 / norm_type))


# ------------------------------------------------------------ clip_grad_norm_

@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "does not clip"])
def test_clip_grad_norm_matches_torch(target, rng, norm_type, max_norm):
    grads = [g.reshape(shape) for g, shape in zip(random_arrays(rng, [1, 7, 33, 1000, 65], np.float64, scale=3.0),
                                                   [(1,), (7,), (3, 11), (1000,), (5, 13)])]
    want_total, want_grads = torch_clip(grads, max_norm, norm_type)
    before = [g.copy() for g in grads]
    total = fusedopt.clip_grad_norm_(grads, max_norm, norm_type)
    assert type(total) is float
    assert total == pytest.approx(want_total, rel=NORM_RTOL, abs=0)
    for i, (got, want) in enumerate(zip(grads, want_grads)):
        # The clip coefficients differ by the totals' rounding, so the grads do too.
        np.testing.assert_allclose(got, want, rtol=NORM_RTOL, atol=0, err_msg=f"grads[{i}]")
    if max_norm > total:  # min(max_norm / (total + 1e-6), 1) = 1: the grads are left alone
        for got, then in zip(grads, before):
            assert got.tobytes() == then.tobytes()


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_clip_grad_norm_matches_numpy(target, dtype, rng, norm_type):
    grads = random_arrays(rng, SIZES, dtype, scale=2.0)
    before = [g.copy() for g in grads]
    total = fusedopt.clip_grad_norm_(grads, 1.0, norm_type)
    assert total == pytest.approx(numpy_norm(before, norm_type), rel=NORM_RTOL, abs=0)
    # The second pass multiplies by the coefficient rounded to the dtype: exactly NumPy's g * c.
    coefficient = dtype(1.0 / (total + 1e-6))
    for i, (got, then) in enumerate(zip(grads, before)):
        np.testing.assert_array_equal(got, then * coefficient, err_msg=f"grads[{i}]")


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_total_norm_is_bitwise_the_same_for_1_and_2_threads(target, dtype, rng, parallel_everywhere, norm_type):
    grads = random_arrays(rng, SIZES + [250_001], dtype)
    results = {}
    for threads in (1, 2, 1):
        with fusedopt.threads(threads):
            copies = [g.copy() for g in grads]
            total = fusedopt.clip_grad_norm_(copies, 0.1, norm_type)
        if threads in results:
            assert total == results[threads][0]
        results[threads] = (total, copies)
    assert results[1][0] == results[2][0], f"{results[1][0]!r} != {results[2][0]!r}"
    for i, (one, two) in enumerate(zip(results[1][1], results[2][1])):
        assert one.tobytes() == two.tobytes(), f"grads[{i}]"


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_total_norm_is_bitwise_the_same_on_every_target(dtype, rng, norm_type):
    """The partial sums keep explicit lanes, so the order of additions, and
    with it the result, does not depend on the vector width either."""
    grads = random_arrays(rng, SIZES, dtype)
    chosen = fusedopt.cpu_features()["isa"]
    totals = {}
    try:
        for name in fusedopt.cpu_features()["supported_targets"]:
            _core.select_target(name)
            totals[name] = fusedopt.get_total_norm(grads, norm_type)
    finally:
        _core.select_target(chosen)
    assert len(set(totals.values())) == 1, totals


def test_norm_accumulates_in_double():
    """float32 squares would overflow at 1e20; float32 sums would lose the ones."""
    big = np.full(4, 1e20, np.float32)
    assert fusedopt.get_total_norm([big]) == pytest.approx(2e20, rel=1e-7)
    ones = np.ones(1 << 25, np.float32)  # 2^25 + 1 is not a float32
    assert fusedopt.get_total_norm([ones, np.ones(1, np.float32)], 1.0) == (1 << 25) + 1


def test_empty_and_none():
    assert fusedopt.clip_grad_norm_([], 1.0) == 0.0
    assert fusedopt.clip_grad_norm_([np.zeros(0), None], 1.0, math.inf) == 0.0
    g = np.array([3.0, 4.0])
    assert fusedopt.clip_grad_norm_([None, g, None], 1.0) == 5.0
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)


def test_single_array_and_string_inf():
    g = np.array([3.0, -4.0], np.float32)
    assert fusedopt.get_total_norm(g) == 5.0
    assert fusedopt.clip_grad_norm_(g, 2.0, "inf") == 4.0
    np.testing.assert_array_equal(g, np.array([3.0, -4.0], np.float32) * np.float32(2.0 / (4.0 + 1e-6)))


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=["L2", "Linf"])
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_grads_without_error_behave_as_torch(rng, norm_type, value):
    """error_if_nonfinite=False: a NaN total scales everything to NaN, an
    infinite total zeroes the finite entries, as torch does."""
    grads = random_arrays(rng, [5, 40], np.float64)
    grads[1][33] = value
    want_total, want_grads = torch_clip(grads, 1.0, norm_type)
    total = fusedopt.clip_grad_norm_(grads, 1.0, norm_type)
    assert (math.isnan(total) and math.isnan(want_total)) or total == want_total
    for got, want in zip(grads, want_grads):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_error_if_nonfinite_names_the_grad_and_changes_nothing(target, rng, value):
    grads = random_arrays(rng, [7, 100, 33], np.float32)
    grads[2][32] = value
    before = [g.copy() for g in grads]
    with pytest.raises(fusedopt.NonFiniteGradError, match=r"grads\[2\] holds a NaN or an infinity") as info:
        fusedopt.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert info.value.index == 2
    assert isinstance(info.value, RuntimeError)  # what torch raises
    for got, then in zip(grads, before):
        assert got.tobytes() == then.tobytes()
    with pytest.raises(RuntimeError):
        torch_clip(before, 1.0, 2.0, error_if_nonfinite=True)


def test_error_if_nonfinite_on_overflow():
    grads = [np.full(4, 1e200)]  # finite, but the sum of squares is not
    with pytest.raises(fusedopt.NonFiniteGradError, match="every gradient is finite, but the norm overflows") as info:
        fusedopt.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert info.value.index is None
    np.testing.assert_array_equal(grads[0], 1e200)


# ------------------------------------------------------------ clip_grad_value_

@pytest.mark.parametrize("clip_value", [0.0, 0.5, 3.0])
def test_clip_grad_value_matches_numpy_and_torch(target, dtype, rng, clip_value):
    grads = random_arrays(rng, SIZES, dtype, scale=2.0)
    grads[2][16] = np.nan
    want = [np.clip(g, -dtype(clip_value), dtype(clip_value)) for g in grads]
    tensors = [torch.from_numpy(g.copy()) for g in grads]
    for t in tensors:
        t.clamp_(min=-clip_value, max=clip_value)
    fusedopt.clip_grad_value_(grads, clip_value)
    for i, (got, expected, t) in enumerate(zip(grads, want, tensors)):
        np.testing.assert_array_equal(got, expected, err_msg=f"grads[{i}]")
        np.testing.assert_array_equal(got, t.numpy(), err_msg=f"grads[{i}] vs torch")
    assert np.isnan(grads[2][16])


def test_clip_grad_value_is_the_same_for_1_and_2_threads(rng, parallel_everywhere):
    grads = random_arrays(rng, SIZES, np.float32)
    results = []
    for threads in (1, 2):
        copies = [g.copy() for g in grads]
        with fusedopt.threads(threads):
            fusedopt.clip_grad_value_(copies, 0.7)
        results.append(copies)
    for one, two in zip(*results):
        assert one.tobytes() == two.tobytes()


# ----------------------------------------------------------------- bad input

def bad_input_cases():
    good = lambda: [np.ones(3), np.ones(4, np.float32)]  # noqa: E731
    read_only = np.ones(5)
    read_only.flags.writeable = False
    base = np.ones(10)
    return [
        ("wrong dtype", lambda: [np.ones(3), np.ones(3, np.float16)], {}, TypeError, r"grads\[1\] has dtype float16"),
        ("int dtype", lambda: [np.ones(3, np.int64)], {}, TypeError, r"grads\[0\] has dtype int64"),
        ("not an array", lambda: [np.ones(3), [1.0, 2.0]], {}, TypeError, r"grads\[1\] must be a numpy.ndarray"),
        ("read-only", lambda: [np.ones(3), read_only], {}, ValueError, r"grads\[1\] is read-only"),
        ("not contiguous", lambda: [np.ones((4, 4))[:, 1]], {}, ValueError, r"grads\[0\] must be dense"),
        ("overlap", lambda: [base[:6], base[4:]], {}, ValueError, r"grads\[\d\] shares memory with grads\[\d\]"),
        ("negative max_norm", good, {"max_norm": -1.0}, ValueError, "max_norm must be a finite number >= 0"),
        ("nan max_norm", good, {"max_norm": math.nan}, ValueError, "max_norm must be a finite number >= 0"),
        ("inf max_norm", good, {"max_norm": math.inf}, ValueError, "max_norm must be a finite number >= 0"),
        ("str max_norm", good, {"max_norm": "1"}, TypeError, "max_norm must be a real number"),
        ("zero norm_type", good, {"norm_type": 0}, ValueError, "norm_type must be a number > 0 or inf"),
        ("negative norm_type", good, {"norm_type": -2.0}, ValueError, "norm_type must be a number > 0 or inf"),
        ("nan norm_type", good, {"norm_type": math.nan}, ValueError, "norm_type must be a number > 0 or inf"),
        ("bool error flag", good, {"error_if_nonfinite": 1}, TypeError, "error_if_nonfinite must be a bool"),
        ("bad foreach", good, {"foreach": "yes"}, TypeError, "foreach must be a bool"),
        ("grads a dict", lambda: {"a": np.ones(3)}, {}, TypeError, "grads must be an ndarray or a list"),
    ]


@pytest.mark.parametrize("label, make, kwargs, error, message", bad_input_cases(),
                         ids=[case[0] for case in bad_input_cases()])
def test_clip_grad_norm_bad_input_changes_nothing(label, make, kwargs, error, message):
    grads = make()
    before = [g.copy() for g in grads] if isinstance(grads, list) else None
    arguments = {"max_norm": 0.1, **kwargs}
    with pytest.raises(error, match=message):
        fusedopt.clip_grad_norm_(grads, **arguments)
    if before is not None:
        for got, then in zip(grads, before):
            np.testing.assert_array_equal(got, then)


@pytest.mark.parametrize("clip_value, error, message", [
    (-0.5, ValueError, "clip_value must be a finite number >= 0"),
    (math.nan, ValueError, "clip_value must be a finite number >= 0"),
    (math.inf, ValueError, "clip_value must be a finite number >= 0"),
    (None, TypeError, "clip_value must be a real number"),
])
def test_clip_grad_value_bad_value(clip_value, error, message):
    g = np.full(3, 5.0)
    with pytest.raises(error, match=message):
        fusedopt.clip_grad_value_([g], clip_value)
    np.testing.assert_array_equal(g, 5.0)


def test_clip_grad_value_read_only_changes_nothing():
    first, last = np.full(3, 5.0), np.full(3, 5.0)
    last.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\] is read-only"):
        fusedopt.clip_grad_value_([first, last], 1.0)
    np.testing.assert_array_equal(first, 5.0)


def test_foreach_is_accepted_for_torch_compatibility():
    for foreach in (None, True, False):
        g = np.array([3.0, 4.0])
        assert fusedopt.clip_grad_norm_([g], 1.0, foreach=foreach) == 5.0
        fusedopt.clip_grad_value_([g], 0.5, foreach=foreach)
        np.testing.assert_array_equal(g, [0.5, 0.5])

"""Bad input gets a TypeError or ValueError that names the argument and the
array's index, and a call that raises has changed no array (the earlier
arrays of the same list included) and no step count."""

import copy
import math

import numpy as np
import pytest

import fusedopt
from cases import BAD_HYPERPARAMETER_IDS, BAD_HYPERPARAMETERS, random_arrays


def fresh(name="Adam", n=3, size=40, dtype=np.float32, **kwargs):
    """An optimizer that has taken one step, and valid grads for the next."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    opt = getattr(fusedopt, name)(params, **kwargs)
    opt.step([rng.standard_normal(size).astype(dtype) for _ in range(n)])
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    return opt, grads


def snapshot(opt, grads):
    arrays = [p.copy() for g in opt.param_groups for p in g["params"]]
    arrays += [g.copy() for g in grads if isinstance(g, np.ndarray)]
    return arrays, copy.deepcopy(opt.state)


def assert_unchanged(opt, grads, before):
    arrays, state = before
    now, now_state = snapshot(opt, grads)
    assert len(now) == len(arrays)
    for a, b in zip(now, arrays):
        np.testing.assert_array_equal(a, b)
    assert len(now_state) == len(state)
    for entry, saved in zip(now_state, state):
        assert entry.keys() == saved.keys()
        for key in entry:
            np.testing.assert_array_equal(entry[key], saved[key])


def last(items, value):
    """Replace the LAST item, so earlier arrays would already be updated by a sloppy kernel."""
    items[-1] = value
    return items


# (id, make (opt, grads) -> (opt, grads) to step with, error type, message pattern)
STEP_CASES = [
    ("grad-dtype", lambda o, g: (o, last(g, g[-1].astype(np.float64))), TypeError,
     r"grads\[2\] has dtype float64 but params\[2\] has dtype float32"),
    ("grad-int", lambda o, g: (o, last(g, g[-1].astype(np.int32))), TypeError, r"grads\[2\]"),
    ("grad-not-array", lambda o, g: (o, last(g, list(g[-1]))), TypeError,
     r"grads\[2\] must be a numpy.ndarray, got list"),
    ("grad-big-endian", lambda o, g: (o, last(g, g[-1].astype(">f4"))), TypeError, r"grads\[2\]"),
    ("grad-shape", lambda o, g: (o, last(g, g[-1][:-1].copy())), ValueError,
     r"grads\[2\] has shape \(39,\) but params\[2\] has shape \(40,\)"),
    ("grad-2d-same-size", lambda o, g: (o, last(g, g[-1].reshape(4, 10))), ValueError, r"grads\[2\] has shape"),
    ("grad-non-contiguous", lambda o, g: (o, last(g, np.repeat(g[-1], 2)[::2])), ValueError,
     r"grads\[2\] must be dense"),
    ("grads-too-short", lambda o, g: (o, g[:-1]), ValueError, r"grads has 2 entries but the optimizer has 3 params"),
    ("grads-too-long", lambda o, g: (o, g + [g[0].copy()]), ValueError, r"grads has 4 entries"),
    ("grads-not-list", lambda o, g: (o, iter(g)), TypeError, r"grads must be a list or tuple"),
    ("grad-is-its-param", lambda o, g: (o, last(g, o.param_groups[0]["params"][2])), ValueError,
     r"shares memory"),
    ("grad-overlaps-a-state", lambda o, g: (o, last(g, o.state[0]["exp_avg"])), ValueError,
     r"state\[0\]\['exp_avg'\] shares memory with grads\[2\]|grads\[2\] shares memory with state\[0\]"),
    ("state-read-only", lambda o, g: (readonly(o.state[2]["exp_avg_sq"]) or o, g), ValueError,
     r"state\[2\]\['exp_avg_sq'\] is read-only"),
    ("param-read-only", lambda o, g: (readonly(o.param_groups[0]["params"][2]) or o, g), ValueError,
     r"params\[2\] is read-only"),
    ("state-wrong-dtype", lambda o, g: (setitem(o.state[2], "exp_avg", o.state[2]["exp_avg"].astype(np.float64)), g),
     TypeError, r"state\[2\]\['exp_avg'\] has dtype float64"),
    ("state-wrong-shape", lambda o, g: (setitem(o.state[2], "exp_avg", np.zeros(41, np.float32)), g),
     ValueError, r"state\[2\]\['exp_avg'\] has shape"),
    ("state-step-negative", lambda o, g: (setitem(o.state[2], "step", -1), g), ValueError,
     r"state\[2\]\['step'\]"),
    ("lr-negative", lambda o, g: (setitem(o.param_groups[0], "lr", -1e-3), g), ValueError,
     r"lr \(param group 0\) must be >= 0"),
    ("lr-nan", lambda o, g: (setitem(o.param_groups[0], "lr", float("nan")), g), ValueError, r"lr .* finite"),
    ("lr-string", lambda o, g: (setitem(o.param_groups[0], "lr", "0.1"), g), TypeError, r"lr .* real number"),
    ("beta1-one", lambda o, g: (setitem(o.param_groups[0], "betas", (1.0, 0.999)), g), ValueError,
     r"betas\[0\] .* must be in \[0.0, 1.0\)"),
    ("beta2-negative", lambda o, g: (setitem(o.param_groups[0], "betas", (0.9, -0.1)), g), ValueError,
     r"betas\[1\]"),
    ("eps-negative", lambda o, g: (setitem(o.param_groups[0], "eps", -1e-8), g), ValueError, r"eps"),
    ("amsgrad-not-bool", lambda o, g: (setitem(o.param_groups[0], "amsgrad", 1), g), TypeError, r"amsgrad .* bool"),
]


def readonly(array):
    array.flags.writeable = False


def setitem(mapping, key, value):
    mapping[key] = value
    return None


@pytest.mark.parametrize("case, make, error, pattern", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_rejects_and_changes_nothing(case, make, error, pattern):
    opt, grads = fresh()
    made = make(opt, grads)
    opt = made[0] or opt
    grads = made[1]
    before = snapshot(opt, grads if isinstance(grads, list) else [])
    with pytest.raises(error, match=pattern):
        opt.step(grads)
    assert_unchanged(opt, grads if isinstance(grads, list) else [], before)


@pytest.mark.parametrize("name, kwargs, error, pattern", BAD_HYPERPARAMETERS, ids=BAD_HYPERPARAMETER_IDS)
def test_constructor_rejects_bad_hyperparameters(name, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        getattr(fusedopt, name)([np.zeros(3)], **kwargs)


def test_second_group_is_named():
    with pytest.raises(ValueError, match=r"lr \(param group 1\)"):
        fusedopt.Adam([{"params": [np.zeros(3)]}, {"params": [np.zeros(3)], "lr": -1.0}])


@pytest.mark.parametrize(
    "params, error, pattern",
    [
        ([np.zeros(3, np.int64)], TypeError, r"params\[0\] has dtype int64"),
        ([np.zeros(3, ">f4")], TypeError, r"params\[0\] has dtype >f4.*native byte order"),
        ([np.zeros(3), np.zeros((4, 4))[:, 0]], ValueError, r"params\[1\] must be dense"),
        ([[1.0, 2.0]], TypeError, r"params\[0\] must be a numpy.ndarray"),
        ([np.zeros(3)] * 2, ValueError, r"params\[1\] shares memory with params\[0\]|params\[0\] shares memory"),
        ([], ValueError, "params is empty"),
        ({np.float64(1.0)}, TypeError, "params must be a list"),
    ],
)
def test_constructor_rejects_bad_params(params, error, pattern):
    with pytest.raises(error, match=pattern):
        fusedopt.SGD(params)


def test_overlapping_params_rejected():
    base = np.zeros(100)
    with pytest.raises(ValueError, match="shares memory"):
        fusedopt.SGD([base[:60], base[50:]])


def test_adjacent_views_are_fine():
    """Views that touch but do not overlap are independent arrays."""
    base = np.zeros(100)
    opt = fusedopt.SGD([base[:50], base[50:]], lr=1.0)
    opt.step([np.ones(50), np.full(50, 2.0)])
    np.testing.assert_array_equal(base, np.r_[np.full(50, -1.0), np.full(50, -2.0)])


# Dense arrays in an order other than C's: each makes a (8, 5)-element array
# from a fresh buffer of 40.
DENSE_LAYOUTS = {
    "fortran": lambda a: np.asfortranarray(a.reshape(8, 5)),
    "reversed": lambda a: a[::-1],
    "transposed": lambda a: a.reshape(2, 4, 5).transpose(2, 0, 1),
    "odd-stride-on-a-length-1-axis": lambda a: np.lib.stride_tricks.as_strided(
        a, shape=(40, 1), strides=(a.itemsize, 1000 * a.itemsize)),
}


@pytest.mark.parametrize("layout", DENSE_LAYOUTS)
def test_dense_arrays_in_any_order_step_as_their_contiguous_copies(layout):
    make = DENSE_LAYOUTS[layout]
    rng = np.random.default_rng(1)
    param = make(rng.standard_normal(40).astype(np.float32))
    grads = [make(rng.standard_normal(40).astype(np.float32)) for _ in range(3)]
    contiguous = np.ascontiguousarray(param)
    opt, expected = fusedopt.Adam([param], lr=0.1), fusedopt.Adam([contiguous], lr=0.1)
    for g in grads:
        opt.step([g])
        expected.step([np.ascontiguousarray(g)])
    np.testing.assert_array_equal(param, contiguous)  # element by element, at the same index
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(opt.state[0][key], expected.state[0][key])


def test_a_grad_laid_out_unlike_its_param_is_refused():
    opt = fusedopt.Adam([np.arange(40, dtype=np.float32).reshape(8, 5)])
    grads = [np.asfortranarray(np.ones((8, 5), np.float32))]
    before = snapshot(opt, grads)
    with pytest.raises(ValueError, match=r"grads\[0\] lays out its elements differently from params\[0\]"):
        opt.step(grads)
    assert_unchanged(opt, grads, before)


def test_read_only_grads_are_fine():
    opt, grads = fresh()
    for g in grads:
        g.flags.writeable = False
    opt.step(grads)
    assert opt.state[0]["step"] == 2


def test_the_same_grad_twice_is_fine():
    """Grads are only read, so two params may share one gradient array."""
    opt, grads = fresh()
    opt.step([grads[0], grads[0], grads[0]])
    assert [s["step"] for s in opt.state] == [2, 2, 2]


@pytest.mark.parametrize("value, error, message", [
    ("0.5", TypeError, r"state\[1\]\['mu_product'\] must be a real number, got str"),
    (math.inf, ValueError, r"state\[1\]\['mu_product'\] must be finite"),
])
def test_bad_scalar_state_fails_before_any_change(rng, value, error, message):
    params = random_arrays(rng, [4, 4], np.float32)
    opt = fusedopt.NAdam(params)
    before = [p.copy() for p in params]
    opt.state[1]["mu_product"] = value
    with pytest.raises(error, match=message):
        opt.step(random_arrays(rng, [4, 4], np.float32))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    assert opt.state[0]["step"] == 0 and opt.state[0]["mu_product"] == 1.0

"""What the table-driven suites cannot see about the newer rules: Lion's
sign(0) = 0 by hand, state that starts at a non-zero value, scalar per-param
state (NAdam's mu_product) through steps, state_dict and bad input, state
born mid-run, the functional forms, and hyperparameter validation."""

import math

import numpy as np
import pytest

import fusedopt
from fusedopt import functional
from cases import assert_same_state, make_pair, random_arrays


# -------------------------------------------------------------------- Lion

def test_lion_sign_of_zero_is_zero(target, dtype):
    """c = beta1 m + (1 - beta1) g == 0 leaves w alone (only weight decay acts)
    but still updates m. beta1 = 0.5 and m = -g make c exactly 0."""
    lr, beta2, wd = 0.25, 0.75, 0.5
    g = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.0, 4.0, 1.0, 2.0], dtype)  # 9: a vector tail too
    w = np.linspace(-1, 1, 9).astype(dtype)
    w0 = w.copy()
    m = -g.copy()
    opt = fusedopt.Lion([w], lr=lr, betas=(0.5, beta2))
    opt.state[0]["exp_avg"][...] = m
    opt.step([g])
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], dtype(beta2) * m + dtype(1 - beta2) * g)

    decayed = w0.copy()
    opt = fusedopt.Lion([decayed], lr=lr, betas=(0.5, beta2), weight_decay=wd)
    opt.state[0]["exp_avg"][...] = m
    opt.step([g])
    np.testing.assert_array_equal(decayed, w0 * dtype(1 - lr * wd))


def test_lion_by_hand(dtype):
    """Each coordinate moves by exactly lr (times the sign), none by a fraction."""
    w = np.zeros(5, dtype)
    opt = fusedopt.Lion([w], lr=0.125, betas=(0.9, 0.99))
    opt.step([np.array([3.0, -1e-30, 0.0, -7.0, 1e-30], dtype)])
    np.testing.assert_array_equal(w, np.array([-0.125, 0.125, 0.0, 0.125, -0.125], dtype))
    np.testing.assert_array_equal(opt.state[0]["exp_avg"],
                                  dtype(1 - 0.99) * np.array([3.0, -1e-30, 0.0, -7.0, 1e-30], dtype))


def test_lion_maximize_is_lion_on_minus_g(rng):
    w1 = rng.standard_normal(40)
    w2 = w1.copy()
    up, down = fusedopt.Lion([w1], lr=0.01, maximize=True), fusedopt.Lion([w2], lr=0.01)
    for _ in range(5):
        g = rng.standard_normal(40)
        up.step([g])
        down.step([-g])
    np.testing.assert_array_equal(w1, w2)


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


# --------------------------------------------------- state with an initial value

def test_adagrad_sum_starts_at_the_initial_value_per_group():
    a, b = np.zeros(3, np.float32), np.zeros(4, np.float32)
    opt = fusedopt.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 2.5}],
                           initial_accumulator_value=0.5)
    np.testing.assert_array_equal(opt.state[0]["sum"], np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(opt.state[1]["sum"], np.full(4, 2.5, np.float32))
    assert opt.state[0]["sum"].dtype == np.float32


def test_state_array_born_mid_run_starts_at_its_initial_value():
    """A missing state array is created by the step (the generic path that a
    setting turned on later takes) from the rule's initial value, not 0."""
    w = np.zeros(3)
    opt = fusedopt.Adagrad([w], lr=1.0, initial_accumulator_value=3.0)
    opt.state[0]["sum"] = None
    g = np.array([1.0, 2.0, -1.0])
    opt.step([g])
    np.testing.assert_array_equal(opt.state[0]["sum"], 3.0 + g * g)
    np.testing.assert_array_equal(w, -(g / (np.sqrt(3.0 + g * g) + 1e-10)))


@pytest.mark.parametrize("start, change", [
    ({}, {"momentum": 0.9}),
    ({}, {"centered": True}),
    ({"momentum": 0.5}, {"centered": True, "momentum": 0.8}),
])
def test_rmsprop_state_born_when_a_setting_turns_it_on(dtype, rng, start, change):
    params = random_arrays(rng, [33, 100], dtype)
    fused, ref = make_pair("RMSprop", start, params)
    for step in range(1, 7):
        if step == 3:
            for opt in (fused, ref):
                opt.param_groups[0].update(change)
        grads = random_arrays(rng, [33, 100], dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


# ------------------------------------------------------------- scalar state

def nadam_mu(t, beta1=0.9, momentum_decay=4e-3):
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def test_nadam_mu_product_is_a_float_advanced_once_per_step(rng):
    params = random_arrays(rng, [5, 6], np.float32)
    opt = fusedopt.NAdam(params)
    assert opt.state[0]["mu_product"] == 1.0 and opt.state[1]["mu_product"] == 1.0
    product = 1.0
    for t in range(1, 6):
        grads = random_arrays(rng, [5, 6], np.float32)
        grads[1] = None if t == 3 else grads[1]  # a param without a gradient is not advanced
        opt.step(grads)
        product *= nadam_mu(t)
        assert type(opt.state[0]["mu_product"]) is float
        assert opt.state[0]["mu_product"] == product
    assert opt.state[1]["step"] == 4
    assert opt.state[1]["mu_product"] == math.prod(nadam_mu(t) for t in range(1, 5))


def test_nadam_state_dict_round_trip_continues_exactly(rng):
    params = random_arrays(rng, [7, 40], np.float64)
    opt = fusedopt.NAdam(params, weight_decay=0.1)
    for _ in range(3):
        opt.step(random_arrays(rng, [7, 40], np.float64))
    saved = opt.state_dict()
    assert saved["state"][0]["mu_product"] == opt.state[0]["mu_product"]

    resumed_params = [p.copy() for p in params]
    resumed = fusedopt.NAdam(resumed_params, weight_decay=0.1)
    resumed.load_state_dict(saved)
    for _ in range(3):
        grads = random_arrays(rng, [7, 40], np.float64)
        opt.step(grads)
        resumed.step(grads)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)
    assert resumed.state[1]["mu_product"] == opt.state[1]["mu_product"]


@pytest.mark.parametrize("value", [None, "1.0", True, math.nan], ids=["missing", "str", "bool", "nan"])
def test_nadam_load_state_dict_checks_mu_product(rng, value):
    params = random_arrays(rng, [3], np.float64)
    opt = fusedopt.NAdam(params)
    saved = opt.state_dict()
    if value is None:
        del saved["state"][0]["mu_product"]
    else:
        saved["state"][0]["mu_product"] = value
    with pytest.raises(ValueError, match=r"params\[0\] needs 'mu_product', a finite number"):
        opt.load_state_dict(saved)
    assert opt.state[0]["mu_product"] == 1.0


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


def test_missing_scalar_state_starts_at_its_initial_value(rng):
    params = random_arrays(rng, [4], np.float32)
    opt = fusedopt.NAdam(params)
    del opt.state[0]["mu_product"]
    opt.step(random_arrays(rng, [4], np.float32))
    assert opt.state[0]["mu_product"] == nadam_mu(1)


def test_state_spec_lists_initial_values():
    group = {"params": [], **fusedopt.NAdam([np.zeros(1)]).defaults}
    assert fusedopt.NAdam.rule.state_spec(group) == ({"exp_avg": 0.0, "exp_avg_sq": 0.0}, {"mu_product": 1.0})
    group = {"params": [], **fusedopt.Adagrad([np.zeros(1)], initial_accumulator_value=0.25).defaults}
    assert fusedopt.Adagrad.rule.state_spec(group) == ({"sum": 0.25}, {})


# ------------------------------------------------------------ functional forms

def run_class_and_functional(rng, name, kwargs, functional_step, steps=5):
    """Runs the class and the functional form on copies; returns both."""
    sizes = [31, 1000]
    params = random_arrays(rng, sizes, np.float32)
    copies = [p.copy() for p in params]
    opt = getattr(fusedopt, name)(params, **kwargs)
    state = [opt.rule.initial_state(opt.param_groups[0], p) for p in copies]
    for t in range(1, steps + 1):
        grads = random_arrays(rng, sizes, np.float32)
        opt.step(grads)
        functional_step(copies, grads, state, t)
    for i in range(len(sizes)):
        np.testing.assert_array_equal(copies[i], params[i])
        for key, value in opt.state[i].items():
            if key != "step":
                np.testing.assert_array_equal(state[i][key], value, err_msg=key)


def column(state, key):
    return [entry[key] for entry in state]


def test_functional_rmsprop(rng):
    kw = dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)
    run_class_and_functional(rng, "RMSprop", kw, lambda w, g, s, t: functional.rmsprop_(
        w, g, column(s, "square_avg"), column(s, "momentum_buffer"), column(s, "grad_avg"), **kw))


def test_functional_adagrad(rng):
    kw = dict(lr=0.1, lr_decay=0.01)
    run_class_and_functional(rng, "Adagrad", {**kw, "initial_accumulator_value": 0.1},
                             lambda w, g, s, t: functional.adagrad_(w, g, column(s, "sum"), step=t, **kw))


def test_functional_nadam_returns_the_new_mu_products(rng):
    kw = dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1)

    def nadam(w, g, s, t):
        products = functional.nadam_(w, g, column(s, "exp_avg"), column(s, "exp_avg_sq"), column(s, "mu_product"),
                                     step=t, **kw)
        for entry, product in zip(s, products):
            entry["mu_product"] = product

    run_class_and_functional(rng, "NAdam", kw, nadam)


def test_functional_radam(rng):
    kw = dict(lr=1e-2, betas=(0.5, 0.9))
    run_class_and_functional(rng, "RAdam", kw, lambda w, g, s, t: functional.radam_(
        w, g, column(s, "exp_avg"), column(s, "exp_avg_sq"), step=t, **kw), steps=8)


def test_functional_adamax(rng):
    kw = dict(lr=1e-2, weight_decay=0.1)
    run_class_and_functional(rng, "Adamax", kw, lambda w, g, s, t: functional.adamax_(
        w, g, column(s, "exp_avg"), column(s, "exp_inf"), step=t, **kw))


def test_functional_lion(rng):
    kw = dict(lr=1e-3, weight_decay=0.1)
    run_class_and_functional(rng, "Lion", kw, lambda w, g, s, t: functional.lion_(w, g, column(s, "exp_avg"), **kw))


def test_functional_errors_name_the_argument():
    w, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="grad_avgs is required"):
        functional.rmsprop_(w, g, np.zeros(3), centered=True)
    with pytest.raises(ValueError, match="mu_products has 0 values, params has 1"):
        functional.nadam_(w, g, np.zeros(3), np.zeros(3), [], step=1)


# -------------------------------------------------------- hyperparameters

@pytest.mark.parametrize("name, kwargs, error, message", [
    ("RMSprop", {"alpha": 1.5}, ValueError, r"alpha \(param group 0\) must be in \[0.0, 1.0\], got 1.5"),
    ("RMSprop", {"momentum": -0.1}, ValueError, r"momentum \(param group 0\) must be >= 0.0"),
    ("RMSprop", {"centered": 1}, TypeError, r"centered \(param group 0\) must be a bool"),
    ("Adagrad", {"lr_decay": -1.0}, ValueError, r"lr_decay \(param group 0\) must be >= 0.0"),
    ("Adagrad", {"initial_accumulator_value": -0.1}, ValueError, r"initial_accumulator_value \(param group 0\)"),
    ("Adagrad", {"eps": math.nan}, ValueError, r"eps \(param group 0\) must be finite"),
    ("NAdam", {"momentum_decay": -1e-3}, ValueError, r"momentum_decay \(param group 0\) must be >= 0.0"),
    ("NAdam", {"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] \(param group 0\) must be in \[0.0, 1.0\)"),
    ("RAdam", {"betas": (-0.1, 0.9)}, ValueError, r"betas\[0\] \(param group 0\) must be in \[0.0, 1.0\)"),
    ("RAdam", {"decoupled_weight_decay": "yes"}, TypeError, r"decoupled_weight_decay \(param group 0\) must be a bool"),
    ("Adamax", {"weight_decay": -1.0}, ValueError, r"weight_decay \(param group 0\) must be >= 0.0"),
    ("Lion", {"lr": -1e-4}, ValueError, r"lr \(param group 0\) must be >= 0.0"),
    ("Lion", {"betas": 0.9}, TypeError, r"betas \(param group 0\) must be a pair of numbers"),
])
def test_bad_hyperparameters(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(fusedopt, name)([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("name", ["RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "Lion"])
def test_torch_defaults(name):
    """The defaults torch.optim users expect (Lion: the paper's)."""
    import inspect

    import torch

    ours = inspect.signature(getattr(fusedopt, name)).parameters
    if name == "Lion":
        assert (ours["lr"].default, ours["betas"].default, ours["weight_decay"].default) == (1e-4, (0.9, 0.99), 0.0)
        return
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for key, parameter in ours.items():
        if key in ("params", "nonfinite"):
            continue
        assert key in theirs, key
        assert parameter.default == theirs[key].default, key
        assert parameter.kind == theirs[key].kind or key == "maximize", key
